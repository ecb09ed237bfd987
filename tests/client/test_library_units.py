"""Pieces of the client library that need no server: uploads, checkpoint verification, decoding, errors, plots."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import struct
import zlib
from pathlib import Path

import grpc
import pytest
from chargpt_client import (
    Attention,
    ChargptClientError,
    CharMapping,
    DataLoss,
    NotFound,
    RetryPolicy,
    TrainingOptions,
)
from chargpt_client import types as t
from chargpt_client.cli.model_cmds import show
from chargpt_client.errors import ERROR_BY_CODE, from_rpc_error
from chargpt_client.from_proto import float32_value, model
from chargpt_client.ops import generate_request, score, training_spec
from chargpt_client.transfer import CheckpointWriter, UploadSource

from chargpt.v1 import inference_pb2, trainer_pb2

TEXT = "To be, or not to be: that is the question. ünïcödé ✓\n" * 50


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._inner.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("kind", ["str", "bytes", "path", "binary file", "text file", "unseekable"])
def test_upload_sources_chunk_the_same_bytes(kind: str, tmp_path: Path) -> None:
    data = TEXT.encode()
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    with contextlib.ExitStack() as files:
        source = {"str": lambda: TEXT, "bytes": lambda: data, "path": lambda: path,
                  "binary file": lambda: files.enter_context(path.open("rb")),
                  "text file": lambda: files.enter_context(path.open(encoding="utf-8")),
                  "unseekable": lambda: _Unseekable(data)}[kind]()
        _check_upload(UploadSource(source, chunk_bytes=1000), data, replayable=kind != "unseekable")  # type: ignore[arg-type]


def _check_upload(upload: UploadSource, data: bytes, replayable: bool) -> None:
    chunks = list(upload.chunks())
    assert b"".join(chunks) == data and all(len(c) <= 1000 * 4 for c in chunks) and len(chunks) > 1
    assert upload.replayable == replayable
    if upload.replayable:
        assert b"".join(upload.chunks()) == data  # a retry sends the same bytes again
    requests = list(upload.requests("name", "desc"))
    assert requests[0].header.name == "name" and all(r.WhichOneof("part") == "data" for r in requests[1:])


def _download(files: dict[str, bytes], tamper: str = "") -> list[trainer_pb2.DownloadCheckpointResponse]:
    header = trainer_pb2.CheckpointArchiveHeader(
        checkpoint=trainer_pb2.Checkpoint(job_id="j", kind=2, step=5),
        files=[trainer_pb2.CheckpointFile(name=n, size_bytes=len(b), sha256=hashlib.sha256(b).hexdigest())
               for n, b in files.items()])
    messages = [trainer_pb2.DownloadCheckpointResponse(header=header)]
    for name, body in files.items():
        for offset in range(0, len(body), 4):
            data = body[offset:offset + 4]
            digest = hashlib.sha256(data).hexdigest()
            if tamper == "chunk" and offset == 4:
                data = b"evil"
            if tamper == "file" and offset == 0:
                data, digest = b"EVIL"[:len(data)], hashlib.sha256(b"EVIL"[:len(data)]).hexdigest()
            messages.append(trainer_pb2.DownloadCheckpointResponse(chunk=trainer_pb2.CheckpointChunk(
                file_name=name, offset=offset, data=data, sha256=digest)))
    return messages


def _consume(messages: list[trainer_pb2.DownloadCheckpointResponse], dest: Path,
             overwrite: bool = False) -> t.DownloadedCheckpoint:
    with CheckpointWriter(dest) as writer:
        for m in messages:
            writer.feed(m)
        return writer.finish(overwrite)


def test_checkpoint_download_verifies_and_renames_into_place(tmp_path: Path) -> None:
    files = {"manifest.json": b'{"a": 1}', "model.safetensors": bytes(range(50))}
    result = _consume(_download(files), tmp_path / "ckpt")
    assert result.checkpoint.kind == "best" and result.checkpoint.step == 5
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == files
    with pytest.raises(FileExistsError):
        _consume(_download(files), tmp_path / "ckpt")
    _consume(_download(files), tmp_path / "ckpt", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directories left


@pytest.mark.parametrize("tamper", ["chunk", "file"])
def test_checkpoint_download_rejects_corruption(tmp_path: Path, tamper: str) -> None:
    with pytest.raises(DataLoss):
        _consume(_download({"model.safetensors": bytes(range(50))}, tamper), tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_checkpoint_download_rejects_escaping_names(tmp_path: Path) -> None:
    with pytest.raises(DataLoss, match="escapes"):
        _consume(_download({"../evil": b"x"}), tmp_path / "ckpt")


def test_char_mapping_round_trip_and_filter() -> None:
    mapping = CharMapping("\n abc")
    assert mapping.vocab_size == 5 and mapping.encode("cab\n") == [4, 2, 3, 0]
    assert mapping.decode(mapping.encode("a b c")) == "a b c"
    assert mapping.filter("abz zy!c") == ("ab c", {"z": 2, "y": 1, "!": 1})
    with pytest.raises(ValueError, match="outside"):
        mapping.encode("abz")
    with pytest.raises(ValueError, match="sorted"):
        CharMapping("ba")


def test_attention_decodes_float16_without_numpy() -> None:
    weights = [1.0, 0.0, 0.25, 0.75] * 2  # shape [1, 2, 2, 2]
    att = Attention(tokens=["a", "b"], layers=[0], heads=[0, 1], shape=(1, 2, 2, 2), dtype="float16",
                    data=struct.pack("<8e", *weights))
    assert list(att.values()) == weights and att.matrix(0, 1) == [[1.0, 0.0], [0.25, 0.75]]
    assert att.to_lists() == [[[[1.0, 0.0], [0.25, 0.75]]] * 2]


def test_every_status_maps_to_a_typed_exception() -> None:
    class FakeError(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return "why"

    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        error = from_rpc_error(FakeError(code))
        assert isinstance(error, ChargptClientError) and error.code == code and error.message == "why"
        assert type(error) is ERROR_BY_CODE[code]
    assert isinstance(from_rpc_error(FakeError(grpc.StatusCode.NOT_FOUND)), NotFound | LookupError)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    delays = list(RetryPolicy(max_attempts=8, initial_backoff=0.1, max_backoff=1.0).delays())
    assert len(delays) == 7
    for n, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**n)
        assert 0.5 * ceiling <= delay <= ceiling


def test_request_builders_validate_names() -> None:
    spec = training_spec(TrainingOptions(max_steps=5, precision="fp32", lr_schedule="constant", compile="off",
                                         seed=None, weight_decay=0.0))
    assert spec.max_steps == 5 and spec.precision == 2 and spec.lr_schedule == 2 and not spec.HasField("seed")
    assert spec.HasField("weight_decay") and spec.weight_decay == 0.0  # an explicit zero is sent, not dropped
    assert training_spec(None) == trainer_pb2.TrainingSpec()
    with pytest.raises(ValueError, match="max_step"):
        TrainingOptions(max_step=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="precision"):
        TrainingOptions(precision="fp8")  # type: ignore[arg-type]
    request = generate_request("m", "hi", preset="Creative", temperature=0.0, stop=["\n\n"])
    assert request.preset == 3 and request.HasField("temperature") and not request.HasField("top_k")


def test_only_the_fields_the_caller_gave_are_sent() -> None:
    """The server tells an explicit 0 (refused, or greedy, or a seed) from an unset field (its default)."""
    unset = generate_request("m", "hi")
    assert not any(unset.HasField(f) for f in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"))
    zeros = generate_request("m", "hi", max_new_tokens=0, temperature=0.0, top_k=0, seed=0)
    assert all(zeros.HasField(f) for f in ("max_new_tokens", "temperature", "top_k", "seed"))
    assert not score("m", "hi").request.HasField("stride")
    assert score("m", "hi", stride=0).request.HasField("stride")


@pytest.mark.parametrize("value", [0.8, 0.3, 1e-38, 1e-45, 5e-6, 100.0, 0.999999, 3.4028235e38, 0.0])
def test_echoed_float32_values_read_back_as_written(value: float) -> None:
    """The summary's float32 temperature comes back as the decimal that was sent, not rounded to 0."""
    wire = struct.unpack("<f", struct.pack("<f", value))[0]
    assert float32_value(wire) == value
    assert f"{float32_value(wire):.9g}" == f"{value:.9g}"


def test_jsonable_turns_nan_into_none() -> None:
    assert t.to_jsonable({"x": math.nan, "y": [1.5]}) == {"x": None, "y": [1.5]}


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and that the data inflates."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat = b"".join(data[i + 8:i + 8 + struct.unpack(">I", data[i:i + 4])[0]]
                    for i in _chunk_offsets(data) if data[i + 4:i + 8] == b"IDAT")
    assert len(zlib.decompress(idat)) > 0
    return width, height


def _chunk_offsets(data: bytes) -> list[int]:
    offsets, i = [], 8
    while i < len(data):
        offsets.append(i)
        i += 12 + struct.unpack(">I", data[i:i + 4])[0]
    return offsets


def test_plots_write_decodable_pngs(tmp_path: Path) -> None:
    from chargpt_client import plots

    pytest.importorskip("matplotlib")
    weights = [1.0, 0.0, 0.5, 0.5]
    att = Attention(tokens=["a", "\n"], layers=[0], heads=[0], shape=(1, 1, 2, 2), dtype="float32",
                    data=struct.pack("<4f", *weights))
    plots.attention_grid(att, tmp_path / "att.png")
    base = {"time": None, "job_id": "j"}
    events: list[t.JobEvent] = [t.Progress(sequence=i, step=i, max_steps=4, loss=4.0 - i / 2, learning_rate=1e-3,
                                           tokens_per_second=1.0, elapsed_seconds=i, eta_seconds=1, **base)
                                for i in range(1, 5)]
    events.append(t.Evaluation(sequence=9, step=4, train_loss=2.0, val_loss=2.2, is_best=True, **base))
    assert plots.loss_curves(events, tmp_path / "loss.png") == 5
    for name in ("att.png", "loss.png"):
        width, height = _png_size(tmp_path / name)
        assert width > 100 and height > 100


def test_models_show_reads_the_serving_plan(capsys: pytest.CaptureFixture[str]) -> None:
    served = inference_pb2.Model(name="m", state=inference_pb2.MODEL_STATE_READY, device="cpu", dtype="bfloat16",
                                 kv_cache_dtype="bfloat16", parallel_decode_from=1, narrow_decode_from=8,
                                 split_decode_from=64)
    show(model(served))
    served.parallel_decode_from, served.narrow_decode_from = 128, 1  # groups before every thread would be used
    show(model(served))
    lines = [x for x in capsys.readouterr().out.splitlines() if "serving:" in x]
    assert lines == [
        "  serving: float32 weights below a decode batch of 8, bfloat16 from it, bfloat16 KV cache, every torch "
        "thread from a decode batch of 1, one row group per thread from 64",
        "  serving: bfloat16 weights, bfloat16 KV cache, one torch thread below a decode batch of 64, one row group "
        "per thread from it"]


def test_an_empty_constraint_is_sent_or_refused_never_dropped() -> None:
    """`regex=""` or `json_schema={}` once meant "no constraint" (dropped as empty) while HTTP held to them."""
    from chargpt_client import ops

    request = ops.generate_request("m", regex="")
    assert request.HasField("regex") and request.regex == ""  # the server refuses it, naming regex
    assert ops.generate_request("m", json_schema={}).json_schema == "{}"  # any JSON document, as over HTTP
    with pytest.raises(ValueError, match="choices: give at least one choice"):
        ops.generate_request("m", choices=[])
    assert not ops.generate_request("m", stop=[], logit_bias={}).ListFields()[1:]  # empty stop/bias: the defaults


def test_the_progress_bar_never_counts_to_fewer_steps_than_are_done() -> None:
    """A budget's estimate that lags a step behind reads `5/5`, never `5/4`; no estimate yet shows the step alone."""
    from chargpt_client.render import JobProgress, progress_total

    def progress(step: int, max_steps: int | None) -> t.Progress:
        return t.Progress(sequence=step, time=None, job_id="j", step=step, max_steps=max_steps, loss=1.0,
                          learning_rate=1e-3, tokens_per_second=10.0, elapsed_seconds=1.0, eta_seconds=1.0)

    assert progress_total(progress(5, 4)) == 5 and progress_total(progress(4, 6)) == 6
    assert progress_total(progress(3, None)) is None
    bar = JobProgress(io.StringIO())
    assert "100% step 5/5 " in bar.bar(progress(5, 4)) and " step 4/6 " in bar.bar(progress(4, 6))
    assert "  0% step 3 " in bar.bar(progress(3, None))
