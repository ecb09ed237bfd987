"""A real Prometheus scraping both services while a tiny model trains and serves: the monitoring path end to end.

The services run from the images' entry points (deploy/tools/imagerun.py); Prometheus is Debian's binary on
127.0.0.1 with deploy/prometheus/prometheus.yml's jobs and alert rules, scraping every second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from deploy.tools import catalogue, dashboard, imagerun
from deploy.tools.dockerfile import stages

pytestmark = pytest.mark.slow
DEPLOY = imagerun.REPO / "deploy"
CORPUS = "".join(f"the {w} sat on the mat and the dog ran to the {w}.\n" for w in ("cat", "hat", "bat", "rat") * 40)
TERMINAL = {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}


@dataclass
class Stack:
    prometheus_url: str
    metrics_ports: dict[str, int]
    job: trainer_pb2.TrainingJob
    generated_chars: int

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        result = self.query(promql)
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])

    def eventually(self, promql: str, accept: Callable[[float], bool], timeout: float = 20.0) -> float:
        """Scrapes are every second; give the series a few of them to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if len(result) == 1 and accept(float(result[0]["value"][1])):
                return float(result[0]["value"][1])
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql}: {result}")
            time.sleep(0.5)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus not installed: .ci/run installs it with deploy/ci/install-prometheus.sh")
        pytest.skip("prometheus binary not installed (apt-get install prometheus, or deploy/ci/install-prometheus.sh)")
    return found


def prometheus_config(metrics_ports: dict[str, int]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its job names and rules, pointed at loopback and scraping every 1s."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        target = job["job_name"].removeprefix("chargpt-")
        if target in metrics_ports:
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_ports[target]}"]}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def start_prometheus(directory: Path, metrics_ports: dict[str, int]) -> tuple[subprocess.Popen[bytes], str]:
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(metrics_ports)))
    port = imagerun.free_port()
    command = [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with (directory / "log.txt").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((directory / "log.txt").read_text()) from None
            time.sleep(0.2)


def start_services(tmp: Path) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, int], dict[str, int]]:
    """Trainer and inference from their image targets; inference loads checkpoints from the trainer."""
    grpc_ports = {"trainer": imagerun.free_port(), "inference": imagerun.free_port()}
    metrics_ports = {"trainer": imagerun.free_port(), "inference": imagerun.free_port()}
    overrides = {
        "trainer": {"CHARGPT_TRAINER_BUILTIN_CORPORA": "false", "CHARGPT_TRAINER_DEVICE": "cpu"},
        "inference": {"CHARGPT_INFERENCE_TRAINER_ADDRESS": f"127.0.0.1:{grpc_ports['trainer']}",
                      "CHARGPT_INFERENCE_DEVICE": "cpu", "CHARGPT_INFERENCE_TORCH_THREADS": "1"},
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    envs = {}
    for target in ("trainer", "inference"):
        stage = stages(DEPLOY / "docker" / "Dockerfile")[target]
        prefix = f"CHARGPT_{target.upper()}_"
        envs[target] = imagerun.image_environment(stage, tmp / "data", {
            prefix + "PORT": str(grpc_ports[target]), prefix + "METRICS_PORT": str(metrics_ports[target]),
            prefix + "SHUTDOWN_GRACE_SECONDS": "5", **overrides[target]})
        (tmp / target).mkdir()
        processes[target] = imagerun.start(stage, envs[target], tmp / target / "log.txt")
    for target, process in processes.items():
        imagerun.wait_healthy(stages(DEPLOY / "docker" / "Dockerfile")[target], envs[target], process, 90)
    return processes, grpc_ports, metrics_ports


def train_tiny_job(channel: grpc.Channel) -> trainer_pb2.TrainingJob:
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    parts = [trainer_pb2.UploadCorpusRequest(header=trainer_pb2.CorpusHeader(name="mats")),
             trainer_pb2.UploadCorpusRequest(data=CORPUS.encode())]
    corpus = stub.UploadCorpus(iter(parts), timeout=30).corpus
    request = trainer_pb2.CreateTrainingJobRequest(
        corpus_id=corpus.corpus_id, display_name="prometheus-it",
        model=trainer_pb2.ModelSpec(custom=common_pb2.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)),
        training=trainer_pb2.TrainingSpec(max_steps=30, batch_size=8, eval_interval=10, checkpoint_interval=10,
                                          sample_interval=0, seed=1),
        resources=trainer_pb2.ResourceSpec(device="cpu"))
    job = stub.CreateTrainingJob(request, timeout=30).job
    deadline = time.monotonic() + 150
    while job.state not in TERMINAL:
        assert time.monotonic() < deadline, f"job still {trainer_pb2.JobState.Name(job.state)}"
        time.sleep(0.5)
        job = stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job.job_id), timeout=10).job
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    finished: trainer_pb2.TrainingJob = job
    return finished


def serve_requests(channel: grpc.Channel, job_id: str) -> int:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    source = inference_pb2.TrainerCheckpointRef(job_id=job_id)
    stub.LoadModel(inference_pb2.LoadModelRequest(name="tiny", trainer_checkpoint=source, device="cpu"), timeout=60)
    generated = 0
    for seed in range(4):
        stream = stub.GenerateStream(inference_pb2.GenerateRequest(model="tiny", prompt="the ", max_new_tokens=24,
                                                                   seed=seed), timeout=60)
        generated += sum(len(part.text) for part in stream)
    stub.Score(inference_pb2.ScoreRequest(model="tiny", text="the cat sat on the mat"), timeout=60)
    with pytest.raises(grpc.RpcError) as missing:
        stub.Generate(inference_pb2.GenerateRequest(model="no-such-model", prompt="a", max_new_tokens=4), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    return generated


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary()
    tmp = tmp_path_factory.mktemp("prometheus-it")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes, grpc_ports, metrics_ports = start_services(tmp)
        (tmp / "prometheus").mkdir()
        processes["prometheus"], url = start_prometheus(tmp / "prometheus", metrics_ports)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_ports['trainer']}") as trainer:
            job = train_tiny_job(trainer)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_ports['inference']}") as inference:
            generated = serve_requests(inference, job.job_id)
        yield Stack(url, metrics_ports, job, generated)
    finally:
        for name, process in processes.items():
            code = imagerun.stop(process, timeout=20)
            assert code == 0 or name == "prometheus", (tmp / name / "log.txt").read_text()[-3000:]


def test_both_targets_are_up(stack: Stack) -> None:
    for job in ("chargpt-trainer", "chargpt-inference"):
        assert stack.eventually(f'up{{job="{job}"}}', lambda v: v == 1) == 1


def test_training_series_were_ingested(stack: Stack) -> None:
    job_id = stack.job.job_id
    steps = stack.eventually(f'chargpt_trainer_steps_total{{job_id="{job_id}"}}', lambda v: v >= stack.job.step)
    assert steps == stack.job.step == 30
    tokens = stack.eventually(f'chargpt_trainer_tokens_total{{job_id="{job_id}"}}', lambda v: v > 0)
    assert tokens >= 30 * 8 * 16  # steps x batch x block size characters
    assert 0 < stack.eventually(f'chargpt_trainer_train_loss{{job_id="{job_id}"}}', lambda v: v > 0) < 10
    assert 0 < stack.eventually(f'chargpt_trainer_val_loss{{job_id="{job_id}"}}', lambda v: v > 0) < 10
    assert stack.eventually('sum(chargpt_trainer_jobs{state="succeeded"})', lambda v: v >= 1) == 1
    assert stack.eventually('sum(chargpt_trainer_jobs_finished_total{state="succeeded"})', lambda v: v >= 1) == 1
    assert stack.eventually("sum(chargpt_trainer_checkpoint_write_seconds_count)", lambda v: v > 0) >= 1
    assert stack.eventually("sum(chargpt_trainer_corpus_bytes)", lambda v: v > 0) >= len(CORPUS)


def test_serving_series_were_ingested(stack: Stack) -> None:
    generated = stack.eventually('sum(chargpt_inference_generation_tokens_total{model="tiny"})',
                                 lambda v: v >= stack.generated_chars)
    assert generated == stack.generated_chars > 0
    assert stack.eventually('sum(chargpt_inference_time_to_first_token_seconds_count{model="tiny"})',
                            lambda v: v >= 4) == 4
    assert stack.eventually('sum(chargpt_inference_inter_token_latency_seconds_count{model="tiny"})',
                            lambda v: v > 0) > 0
    assert stack.eventually('sum(chargpt_inference_request_success_total{model="tiny"})', lambda v: v >= 4) == 4
    assert stack.eventually("sum(chargpt_inference_models_loaded)", lambda v: v >= 1) == 1
    assert stack.eventually("sum(chargpt_inference_score_requests_total)", lambda v: v >= 1) == 1
    assert stack.eventually('sum(chargpt_inference_rpcs_total{method="Generate", code="NOT_FOUND"})',
                            lambda v: v >= 1) == 1
    assert stack.value("sum(chargpt_inference_requests_running)") == 0  # all requests finished


def test_each_service_exposes_the_documented_metric_families(stack: Stack) -> None:
    for target, expected in (("trainer", catalogue.TRAINER), ("inference", catalogue.INFERENCE)):
        url = f"http://127.0.0.1:{stack.metrics_ports[target]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            exposed = catalogue.exposition_families(reply.read().decode())
        assert {name: exposed.get(name) for name in expected} == expected


def test_alert_rules_load_and_evaluate_cleanly(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/rules", timeout=10) as reply:
            groups = json.load(reply)["data"]["groups"]
        health = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
        if all(value == "ok" for value in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert set(health) == {rule["alert"] for group in expected["groups"] for rule in group["rules"]}
    assert set(health.values()) == {"ok"}, health
    firing = stack.query('ALERTS{alertstate="firing"}')
    assert firing == []  # a healthy stack pages nobody (every alert has a `for:` or needs failures)


def test_dashboard_queries_run_and_key_panels_have_data(stack: Stack) -> None:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "chargpt.json").read_text())
    key_panels = ("Targets up", "Training jobs by state", "Loss", "Training throughput", "Time to first token",
                  "Inter-token latency", "Requests running / waiting", "Tokens per second", "Requests by outcome")
    deadline = time.monotonic() + 20  # rate() needs two samples of a series inside its window
    while True:
        answered: dict[str, list[list[dict[str, Any]]]] = {}
        for title, expr in dashboard.queries(board):
            answered.setdefault(title, []).append(stack.query(expr))  # every query must at least run
        empty = [title for title in key_panels if not any(answered[title])]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert empty == [], f"panels without data: {empty}"
