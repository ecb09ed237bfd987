"""Auto-sizing from (faked) device facts, and the real probe on this machine."""

import pytest

from chargpt.core.config import ModelConfig
from chargpt.core.device import (
    GIB,
    SIZE_PROFILES,
    DeviceFacts,
    auto_size,
    parse_device,
    probe_device,
    resolve_device,
)
from chargpt.errors import FailedPreconditionError, InvalidArgumentError


def gpu(memory_gib: float) -> DeviceFacts:
    return DeviceFacts(type="cuda", name="Fake GPU", memory_bytes=int(memory_gib * GIB), bf16_supported=True)


def test_24gb_gpu_gets_the_notebook_model() -> None:
    size = auto_size(gpu(24))
    assert (size.n_layer, size.n_head, size.n_embd, size.block_size, size.batch_size) == (6, 6, 384, 256, 64)
    config = ModelConfig(vocab_size=65, n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd,
                         block_size=size.block_size)
    assert 10_500_000 < config.parameter_count() < 10_900_000


@pytest.mark.parametrize(("smaller", "larger"), [(8, 24), (24, 40), (40, 80), (80, 141)])
def test_more_memory_means_a_bigger_model(smaller: float, larger: float) -> None:
    a, b = auto_size(gpu(smaller)), auto_size(gpu(larger))
    assert b.n_layer > a.n_layer and b.n_embd > a.n_embd and b.n_head > a.n_head


def test_small_gpu_still_gets_a_model() -> None:
    assert auto_size(gpu(2)).batch_size <= 16


def test_cpu_gets_a_small_fast_model() -> None:
    size = auto_size(DeviceFacts(type="cpu", cpu_cores=2, memory_bytes=24 * GIB))
    assert size.name == "cpu" and size.n_embd <= 256


def test_every_preset_is_a_valid_config() -> None:
    for p in SIZE_PROFILES.values():
        ModelConfig(vocab_size=65, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd, block_size=p.block_size)


def test_probe_finds_this_machine() -> None:
    facts = probe_device("cpu")
    assert facts.type == "cpu" and facts.cpu_cores >= 1 and facts.memory_bytes > 0


def test_probe_refuses_missing_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        probe_device("cuda")


@pytest.mark.parametrize(("spec", "parsed"), [("", "auto"), ("auto", "auto"), (" CPU ", "cpu"), ("mps", "mps"),
                                              ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:999", "cuda:999")])
def test_one_device_parser(spec: str, parsed: str) -> None:
    """The trainer's resources.device and the inference service's LoadModel device read the same way."""
    assert parse_device(spec, "resources.device") == parsed


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:1000", "cuda:-1", "cpu:0", "mps:1", "tpu", "../x"])
def test_malformed_devices_name_the_field(spec: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        parse_device(spec, "resources.device")
    assert err.value.field == "resources.device" and "cuda:N" in str(err.value)


def test_resolve_device_probes_and_names_the_field() -> None:
    import torch

    assert resolve_device(" cpu", "device") == ("cpu", probe_device("cpu"))
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(FailedPreconditionError, match=r"^device: 'cuda:12' is not usable"):
        resolve_device("CUDA:12", "device")
