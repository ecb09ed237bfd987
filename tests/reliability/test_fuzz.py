"""Property-based fuzzing of every request message of both services (strategies built from the descriptors).

Whatever arrives, the answer is OK or a clear client-side status, never INTERNAL/UNKNOWN; the servers stay up; and
afterwards nothing half-written is stored (corpora complete, no temporary files, the model still serves).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.client.conftest import ServerThread, inference_factory, trainer_factory
from tests.inference_service.conftest import VOCAB, write_checkpoint
from tests.support.protofuzz import ANY_TEXT, message_strategy

pytestmark = pytest.mark.slow
# PERMISSION_DENIED: a checkpoint path outside the models root; DATA_LOSS: a checkpoint that fails its hash
CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DATA_LOSS}
FAKE_ENGINE_DIR = Path(__file__).resolve().parents[1] / "trainer_service"
UPLOAD_LIMIT = 64 * 1024
SERVICES = {"TrainerService": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
            "InferenceService": inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]}
UNARY_METHODS = [(service, method.name) for service, desc in SERVICES.items() for method in desc.methods
                 if not method.client_streaming]
SEEN: Counter[tuple[str, str]] = Counter()  # (method, final code): printed at the end, shows what was explored
FUZZ = settings(max_examples=int(os.environ.get("CHARGPT_FUZZ_EXAMPLES", "30")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Targets:
    channels: dict[str, grpc.Channel]
    data_dir: Path
    models_dir: Path
    kept_corpus: str
    victim_corpus: str
    done_job: str


def _text_of(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=min_size, max_size=max_size)


def overrides(t: Targets) -> dict[str, st.SearchStrategy[Any]]:
    """Targeted values for the fields that matter, mixed with the generic ones so both kinds are explored."""
    job = st.one_of(ANY_TEXT, st.just(t.done_job))
    model = st.one_of(st.just("tiny"), st.just("tiny"), ANY_TEXT)
    tiny = common_pb2.ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8)
    small_steps = st.one_of(st.integers(1, 4), st.integers(-2**63, 2**63 - 1))
    v = "chargpt.v1."
    return {
        **{f"{v}{m}.job_id": job for m in ("GetTrainingJobRequest", "CancelTrainingJobRequest",
                                            "ResumeTrainingJobRequest", "WatchTrainingJobRequest",
                                            "ListCheckpointsRequest", "DownloadCheckpointRequest")},
        f"{v}GetCorpusRequest.corpus_id": st.one_of(ANY_TEXT, st.just(t.kept_corpus)),
        f"{v}DeleteCorpusRequest.corpus_id": st.one_of(ANY_TEXT, st.just(t.victim_corpus)),
        f"{v}CreateTrainingJobRequest.corpus_id": st.one_of(ANY_TEXT, st.just(t.kept_corpus), st.just(t.kept_corpus)),
        f"{v}ModelSpec.custom": st.one_of(st.just(tiny), message_strategy(common_pb2.ModelConfig.DESCRIPTOR)),
        f"{v}CreateTrainingJobRequest.training": st.one_of(
            st.just(trainer_pb2.TrainingSpec(max_steps=3, batch_size=2, eval_interval=2, sample_interval=0)),
            message_strategy(trainer_pb2.TrainingSpec.DESCRIPTOR, {f"{v}TrainingSpec.max_steps": small_steps})),
        f"{v}CreateTrainingJobRequest.resources": st.one_of(st.just(trainer_pb2.ResourceSpec(device="cpu")),
                                                            message_strategy(trainer_pb2.ResourceSpec.DESCRIPTOR)),
        f"{v}ResourceSpec.device": st.sampled_from(["", "cpu", "auto", "cuda", "cuda:7", "mps", "tpu", "../x"]),
        f"{v}ResourceSpec.num_processes": st.one_of(st.integers(-2, 3), st.integers(-2**31, 2**31 - 1)),
        f"{v}GenerateRequest.model": model, f"{v}ScoreRequest.model": model,
        f"{v}GetAttentionRequest.model": model, f"{v}GetModelRequest.name": model,
        f"{v}GenerateRequest.prompt": st.one_of(ANY_TEXT, _text_of(VOCAB, 0, 80)),
        f"{v}GenerateRequest.max_new_tokens": st.one_of(st.integers(1, 40), st.integers(-2**31, 2**31 - 1)),
        f"{v}GenerateRequest.temperature": st.one_of(st.floats(0, 2, width=32), st.floats(0, 2, width=32),
                                                     st.floats(width=32)),
        f"{v}GenerateRequest.top_p": st.one_of(st.floats(0.125, 1, width=32), st.floats(width=32)),
        f"{v}GenerateRequest.top_k": st.one_of(st.integers(0, 100), st.integers(-2**31, 2**31 - 1)),
        f"{v}GenerateRequest.preset": st.integers(-1, 4),
        f"{v}GenerateRequest.stop": st.one_of(st.lists(_text_of(VOCAB, 1, 3), max_size=3),
                                              st.lists(ANY_TEXT, max_size=20)),
        f"{v}ScoreRequest.text": st.one_of(ANY_TEXT, _text_of(VOCAB, 2, 300)),
        f"{v}GetAttentionRequest.text": st.one_of(ANY_TEXT, _text_of(VOCAB, 1, 32)),
        f"{v}GetAttentionRequest.layers": st.lists(st.integers(-2, 3), max_size=4),
        f"{v}GetAttentionRequest.heads": st.lists(st.integers(-2, 5), max_size=4),
        f"{v}LoadModelRequest.name": st.one_of(ANY_TEXT, st.sampled_from(["tiny", "other", "x.y-z_1"])),
        f"{v}LoadModelRequest.checkpoint_path": st.one_of(ANY_TEXT, st.sampled_from(
            ["tiny", "../tiny", "/etc", "tiny/../tiny", ".", "", "tiny/model.safetensors", "/proc/self"])),
        f"{v}LoadModelRequest.device": st.sampled_from(["", "cpu", "auto", "cuda", "cuda:99", "mps", "gpu"]),
        f"{v}UnloadModelRequest.name": ANY_TEXT.filter(lambda name: name != "tiny"),
    }


def _call(t: Targets, service: str, method_name: str, request: Any) -> grpc.StatusCode:
    method = SERVICES[service].methods_by_name[method_name]
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{SERVICES[service].full_name}/{method_name}"
    channel = t.channels[service]
    kwargs: dict[str, Any] = {"request_serializer": type(request).SerializeToString,
                              "response_deserializer": response_class.FromString}
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, **kwargs)(request, timeout=3 if method_name.startswith("Watch")
                                                          else 60):
                pass
        else:
            channel.unary_unary(path, **kwargs)(request, timeout=60)
    except grpc.RpcError as err:
        code = err.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and method_name == "WatchTrainingJob":
            return grpc.StatusCode.OK  # watching a job that is still running: the stream is live, as it should be
        assert code in CLEAR, f"{method_name} -> {code}: {err.details()}"
        SEEN[method_name, code.name] += 1
        return code
    SEEN[method_name, "OK"] += 1
    return grpc.StatusCode.OK


def _healthy(t: Targets, service: str) -> None:
    reply = health_pb2_grpc.HealthStub(t.channels[service]).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("service", "method_name"), UNARY_METHODS, ids=[m for _, m in UNARY_METHODS])
def test_fuzzed_requests_get_clear_answers(targets: Targets, service: str, method_name: str) -> None:
    request_type = SERVICES[service].methods_by_name[method_name].input_type
    strategy = message_strategy(request_type, overrides(targets))

    @FUZZ
    @given(request=strategy)
    def run(request: Any) -> None:
        _call(targets, service, method_name, request)
        _healthy(targets, service)

    run()


def _chunk() -> st.SearchStrategy[bytes]:
    valid = _text_of("abc é日🙂\n", 0, 400).map(lambda s: s.encode())
    broken = st.sampled_from([b"\xff", b"\xc3", b"\xe6\x97", b"\xf0\x9f\x99", b"\xed\xa0\x80", b"\x00", b""])
    return st.one_of(valid, broken, st.binary(max_size=300), st.just(b"x" * (UPLOAD_LIMIT + 1)))


@FUZZ
@given(st.data())
def test_fuzzed_uploads_store_complete_corpora_or_nothing(targets: Targets, data: st.DataObject) -> None:
    header = data.draw(st.one_of(st.none(), message_strategy(trainer_pb2.CorpusHeader.DESCRIPTOR, {
        "chargpt.v1.CorpusHeader.name": st.one_of(ANY_TEXT, st.sampled_from(["fuzz", "a b.c-d_e", "x" * 128]))})))
    chunks = data.draw(st.lists(_chunk(), max_size=8))
    bulk = data.draw(st.booleans())  # often add enough valid text to be a trainable corpus
    messages = [] if header is None else [trainer_pb2.UploadCorpusRequest(header=header)]
    messages += [trainer_pb2.UploadCorpusRequest(data=c) for c in chunks]
    if bulk:
        messages.append(trainer_pb2.UploadCorpusRequest(data=("fuzzed text " * 120).encode()))
    if data.draw(st.booleans()):
        messages.insert(data.draw(st.integers(0, len(messages))), trainer_pb2.UploadCorpusRequest(header=header))
    stub = trainer_pb2_grpc.TrainerServiceStub(targets.channels["TrainerService"])
    try:
        stub.UploadCorpus(iter(messages), timeout=60)
        SEEN["UploadCorpus", "OK"] += 1
    except grpc.RpcError as err:
        assert err.code() in CLEAR, f"UploadCorpus -> {err.code()}: {err.details()}"
        SEEN["UploadCorpus", err.code().name] += 1
    _healthy(targets, "TrainerService")


def test_after_fuzzing_nothing_half_written_is_stored(targets: Targets) -> None:
    for (method, code), count in sorted(SEEN.items()):
        print(f"{method:20} {code:20} {count}")
    trainer = trainer_pb2_grpc.TrainerServiceStub(targets.channels["TrainerService"])
    corpora = trainer.ListCorpora(trainer_pb2.ListCorporaRequest(), timeout=30).corpora
    files = {p.name: p for p in (targets.data_dir / "corpora").iterdir()}
    assert {f"{c.corpus_id}.txt" for c in corpora} == set(files), "stray or missing corpus files"
    for corpus in corpora:
        data = files[f"{corpus.corpus_id}.txt"].read_bytes()
        assert hashlib.sha256(data).hexdigest() == corpus.corpus_id and len(data) == corpus.size_bytes
        assert len(data.decode("utf-8")) == corpus.num_chars
    leftovers = [p for p in targets.data_dir.rglob("*") if p.name.startswith(".upload-") or ".tmp-" in p.name]
    assert leftovers == []
    inference = inference_pb2_grpc.InferenceServiceStub(targets.channels["InferenceService"])
    reply = inference.Generate(inference_pb2.GenerateRequest(model="tiny", prompt="a", max_new_tokens=5), timeout=30)
    assert len(reply.text) == 5
    assert not [p for p in targets.models_dir.rglob(".download-*")]


@pytest.fixture(scope="module")
def targets(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as env:  # workers (subprocesses) find the fake engine
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_ENGINE_DIR), os.environ.get("PYTHONPATH")])))
        env.setenv("FAKE_ENGINE_STEP_SECONDS", "0.02")
        trainer_server, trainer = server_thread.start(trainer_factory(
            root / "trainer", builtin_corpora=False, engine="fake_engine:run_training", event_poll_seconds=0.1,
            max_upload_bytes=UPLOAD_LIMIT, worker_stop_timeout_seconds=10))
        write_checkpoint(root / "models" / "tiny", block_size=32)
        _, inference = server_thread.start(inference_factory(root / "models", max_new_tokens_limit=256,
                                                             max_score_chars=5000, max_models=4))
        channels = {"TrainerService": grpc.insecure_channel(trainer),
                    "InferenceService": grpc.insecure_channel(inference)}
        t = Targets(channels, root / "trainer", root / "models", "", "", "")
        _prepare(t)
        yield t
        stub = trainer_pb2_grpc.TrainerServiceStub(channels["TrainerService"])
        for job in stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest(page_size=1000), timeout=30).jobs:
            stub.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=30)
        for channel in channels.values():
            channel.close()
        server_thread.stop(trainer_server)


def _prepare(t: Targets) -> None:
    """Two corpora (one may be deleted by the fuzzer), a finished job, and the "tiny" model loaded."""
    trainer = trainer_pb2_grpc.TrainerServiceStub(t.channels["TrainerService"])

    def upload(name: str, text: str) -> str:
        messages = [trainer_pb2.UploadCorpusRequest(header=trainer_pb2.CorpusHeader(name=name)),
                    trainer_pb2.UploadCorpusRequest(data=text.encode())]
        return str(trainer.UploadCorpus(iter(messages), timeout=30).corpus.corpus_id)

    t.kept_corpus = upload("kept", "To be, or not to be, that is the question.\n" * 40)
    t.victim_corpus = upload("victim", "All the world's a stage.\n" * 60)
    job = trainer.CreateTrainingJob(trainer_pb2.CreateTrainingJobRequest(
        corpus_id=t.kept_corpus, model=trainer_pb2.ModelSpec(custom=common_pb2.ModelConfig(
            n_layer=1, n_head=2, n_embd=8, block_size=8)),
        training=trainer_pb2.TrainingSpec(max_steps=4, batch_size=2, eval_interval=2, checkpoint_interval=2),
        resources=trainer_pb2.ResourceSpec(device="cpu")), timeout=30).job
    t.done_job = job.job_id
    deadline = time.monotonic() + 120
    while trainer.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job.job_id), timeout=10).job.state \
            != trainer_pb2.JOB_STATE_SUCCEEDED:
        assert time.monotonic() < deadline, "the preparation job did not finish"
        time.sleep(0.2)
    inference = inference_pb2_grpc.InferenceServiceStub(t.channels["InferenceService"])
    inference.LoadModel(inference_pb2.LoadModelRequest(name="tiny", checkpoint_path="tiny"), timeout=60)
