"""What the cluster executors share: how a sequence of looks at the cluster becomes the job's state changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.trainer_service.executors.test_slurm_script import plan
from trainer_service.executors.base import RunningJob
from trainer_service.executors.cluster import ClusterExecutor, ClusterStatus
from trainer_service.executors.slurm import parse_state, to_status
from trainer_service.jobs.events import EventHub
from trainer_service.jobs.layout import CORPUS_COPY, EVENTS_FILE, RUNS_FILE, JobDir
from trainer_service.jobs.manager import JobManager
from trainer_service.metrics import TrainerMetrics
from trainer_service.settings import TrainerSettings
from trainer_service.store import Store
from trainer_service.store_records import QUEUED, RUNNING, CorpusRecord
from trainer_service.training.api import CorpusRef, ProgressUpdate, TrainingOutcome, TrainingPlan


class RecordedCluster(ClusterExecutor):
    """A cluster executor whose cluster is a list of recorded squeue lines (`squeue -O SQUEUE_FORMAT`).

    Before each look, `writes` may add what the job's script and workers wrote since the previous one.
    """

    name, cluster = "slurm", "Slurm"

    def __init__(self, store: Store, looks: list[tuple[str, Callable[[], None]]] | None = None) -> None:
        super().__init__(TrainerSettings(executor="slurm", cluster_poll_seconds=0.01), store,
                         EventHub(store, TrainerMetrics(), 0.1))
        self.looks = looks or []

    async def submit(self, run: RunningJob) -> str:
        return "7"

    async def status(self, run: RunningJob) -> ClusterStatus | None:
        line, writes = self.looks.pop(0)
        writes()
        return to_status(*parse_state(line))

    async def cancel(self, run: RunningJob, force: bool) -> None:
        return None

    async def requeue_cause(self, run: RunningJob) -> str:
        return "requeued"


def poll(store: Store, lines: list[str]) -> list[tuple[str, str]]:
    """The (state, message) changes a trainer records while it polls job "j" once per recorded line."""
    first = store.last_event_id()
    executor = RecordedCluster(store)
    run = RunningJob(store.get_job("j"), plan("cpu", 1, 1), [], Path("/nonexistent"))
    for line in lines:
        asyncio.run(executor._note_phase(run, to_status(*parse_state(line))))
    return [(e.payload["state"], e.payload["message"]) for e in store.events_since_id(first)]


def new_store(tmp_path: Path) -> Store:
    """A store holding one queued job, "j"."""
    store = Store(tmp_path / "jobs.db")
    store._conn.execute("INSERT INTO jobs (job_id, display_name, state, corpus_id, plan, parameter_count, "
                        "created) VALUES ('j', '', ?, 'c', '{}', 0, 0)", (QUEUED,))
    return store


def replay(tmp_path: Path, lines: list[str]) -> list[tuple[str, str]]:
    """poll() on new_store()."""
    return poll(new_store(tmp_path), lines)


REQUEUED = (QUEUED, "Slurm requeued it; will resume from the latest checkpoint")
PENDING_AGAIN = (QUEUED, "Slurm requeued it, now PENDING (BeginTime); will resume from the latest checkpoint")


@pytest.mark.parametrize(("lines", "changes"), [
    # a run from start to end: COMPLETING is still the same run
    (["PENDING|None||0", "RUNNING|None|vm|0", "COMPLETING|None|vm|0"], [(RUNNING, "running on vm")]),
    # scontrol requeue, polled often enough to see each phase: the ending run already counts the restart
    (["RUNNING|None|vm|0", "COMPLETING|None|vm|1", "PENDING|BeginTime||1", "RUNNING|None|vm|1"],
     [(RUNNING, "running on vm"), PENDING_AGAIN, (RUNNING, "running on vm")]),
    (["RUNNING|None|vm|0", "COMPLETING|None|vm|1", "RUNNING|None|vm|1"],
     [(RUNNING, "running on vm"), REQUEUED, (RUNNING, "running on vm")]),
    (["RUNNING|None|vm|0", "PENDING|BeginTime||1", "RUNNING|None|vm|1", "COMPLETING|None|vm|1"],
     [(RUNNING, "running on vm"), PENDING_AGAIN, (RUNNING, "running on vm")]),
    # queued again for less than a poll interval: only the restart count tells
    (["RUNNING|None|vm|0", "RUNNING|None|vm|1", "RUNNING|None|vm|1"],
     [(RUNNING, "running on vm"), REQUEUED, (RUNNING, "running on vm")]),
])
def test_a_requeue_is_noticed_by_the_pending_state_or_by_the_restart_count(
        tmp_path: Path, lines: list[str], changes: list[tuple[str, str]]) -> None:
    assert replay(tmp_path, lines) == changes


def test_the_restart_count_seen_running_survives_the_trainer(tmp_path: Path) -> None:
    """A restarted trainer re-attaching to a job Slurm restarted before does not report that requeue again."""
    assert replay(tmp_path, ["RUNNING|None|vm|0", "RUNNING|None|vm|2"])[-1] == (RUNNING, "running on vm")
    assert poll(Store(tmp_path / "jobs.db"), ["RUNNING|None|vm|2", "COMPLETING|None|vm|2"]) == []


def test_the_events_of_a_run_come_after_its_state_change_even_when_its_queueing_was_missed(tmp_path: Path) -> None:
    """The job's script records where each run's events begin (runs.txt); the trainer notes the requeue there."""
    def progress(*steps: int) -> Callable[[], None]:
        def write() -> None:
            with open(tmp_path / EVENTS_FILE, "a", encoding="utf-8") as f:
                f.writelines(ProgressUpdate(step=s, max_steps=9, loss=1.0, learning_rate=0.1, tokens_per_second=1.0,
                                            tokens_per_step=1, elapsed_seconds=1.0, eta_seconds=1.0)
                             .model_dump_json() + "\n" for s in steps)
        return write

    def run_starts(restart: int) -> None:
        with open(tmp_path / RUNS_FILE, "a", encoding="utf-8") as f:
            size = (tmp_path / EVENTS_FILE).stat().st_size if (tmp_path / EVENTS_FILE).exists() else 0
            f.write(f"{restart} {size}\n")

    store = new_store(tmp_path)
    executor = RecordedCluster(store, [
        ("RUNNING|None|vm|0", lambda: (run_starts(0), progress(1, 2)())),
        # requeued after step 3, back at work before the next look: step 3 again, from the checkpoint
        ("RUNNING|None|vm|1", lambda: (progress(3)(), run_starts(1), progress(3, 4)())),
        ("COMPLETED|None|vm|1", progress(5))])
    ended = asyncio.run(executor.wait(RunningJob(store.get_job("j"), plan("cpu", 1, 1), [], tmp_path)))
    assert ended.code == 0
    logged = [e.payload.get("message") or e.payload["step"] for e in store.events_after("j", 0)]
    assert logged == ["running on vm", 1, 2, 3, REQUEUED[1], "running on vm", 3, 4, 5], logged


@pytest.mark.parametrize(("executor", "copied"), [("local", False), ("slurm", True), ("kubernetes", True)])
def test_the_job_directory_holds_the_corpus_the_workers_read(tmp_path: Path, executor: str, copied: bool) -> None:
    """Local workers read the trainer's corpus in place; cluster nodes see only the job directory, so the corpus
    text is copied into it and the worker's corpus.json points there."""
    text = tmp_path / "corpus-source.txt"
    text.write_text("abc" * 100, encoding="utf-8")
    corpus = CorpusRecord(corpus_id="c" * 64, name="abc", description="", size_bytes=300, num_chars=300,
                          vocabulary="abc", train_chars=270, val_chars=30, builtin=False, created=0.0, path=str(text))
    store = Store(tmp_path / "jobs.db")
    store.put_corpus(corpus)
    settings = TrainerSettings(executor=executor, data_dir=tmp_path / "data")  # type: ignore[arg-type]

    async def create() -> JobDir:
        manager = JobManager(settings, store, EventHub(store, TrainerMetrics(), 0.1))
        await manager.create("j", "", plan("cpu", 1, 1), corpus)
        return JobDir(manager.job_dir("j"))

    job_dir = asyncio.run(create())
    ref = CorpusRef.model_validate_json(job_dir.corpus.read_text(encoding="utf-8"))
    assert (ref.path == job_dir.path / CORPUS_COPY) is copied and ref.path.read_text(encoding="utf-8") == "abc" * 100
    assert TrainingPlan.model_validate_json(job_dir.plan.read_text(encoding="utf-8")) == plan("cpu", 1, 1)
    assert job_dir.read_outcome() is None and job_dir.latest_step() == 0
    job_dir.write_outcome(TrainingOutcome(final_step=3, stopped_early=False, schedule_complete=True))
    assert job_dir.read_outcome() == TrainingOutcome(final_step=3, stopped_early=False, schedule_complete=True)
    job_dir.clear_outcome()
    assert job_dir.read_outcome() is None
