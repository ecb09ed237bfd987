"""A job's directory, the one contract between the worker, the job manager and the executors: files and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer_service.jobs.checkpoints import list_checkpoints
from trainer_service.jobs.failure import last_exception
from trainer_service.training.api import LATEST, TrainingOutcome

PLAN_FILE, CORPUS_FILE, OUTCOME_FILE = "plan.json", "corpus.json", "outcome.json"  # the worker's input and result
EVENTS_FILE, LOG_FILE, LOCK_FILE = "events.jsonl", "worker.log", "worker.lock"
FAILURE_FILE = "failure.txt"  # a worker's reason for failing, one line (its traceback goes to worker.log)
INIT_FROM_DIR = "init_from"  # a fine-tune's parent checkpoint, copied at creation (the job never reads the original)
CORPUS_COPY = "corpus.txt"  # cluster jobs read the text from the job directory, on the shared storage
# One line per run of a cluster job, written by its script before the workers start: "<restart count> <size of
# events.jsonl>", where that run's events begin (a requeued job's runs append to the same event log).
RUNS_FILE = "runs.txt"
SLURM_SCRIPT_FILE = "slurm.sbatch"
EXIT_LOCKED = 75  # the worker's exit code when another live worker holds the job (EX_TEMPFAIL)
EXIT_STOP_DEADLINE = 70  # the worker's exit code when it was asked to stop but did not finish in time
TAIL_CHARS = 64_000  # enough of worker.log for the last traceback's header and its exception line


class JobDir:
    """Where a job's worker reads its plan and leaves its log, events, outcome and checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plan, self.corpus, self.outcome = path / PLAN_FILE, path / CORPUS_FILE, path / OUTCOME_FILE
        self.events, self.log, self.failure = path / EVENTS_FILE, path / LOG_FILE, path / FAILURE_FILE
        self.init_from = path / INIT_FROM_DIR

    def latest_step(self) -> int:
        """The step of the `latest` checkpoint, where the next run resumes (0: none yet)."""
        latest = [c for c in list_checkpoints(self.path) if c.kind == LATEST]
        return latest[0].manifest.training.step if latest else 0

    def log_tail(self, offset: int) -> str:
        """What the workers printed since `offset` in worker.log (the last TAIL_CHARS of it)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no output)"
        return text[-TAIL_CHARS:].strip() or "(no output)"

    def write_outcome(self, outcome: TrainingOutcome) -> None:
        tmp = self.path / f".{OUTCOME_FILE}.tmp"
        tmp.write_text(outcome.model_dump_json(), encoding="utf-8")
        os.replace(tmp, self.outcome)

    def read_outcome(self) -> TrainingOutcome | None:
        """How the last run ended, as its rank 0 wrote it; None when it wrote nothing (it crashed or was killed)."""
        try:
            return TrainingOutcome.model_validate(json.loads(self.outcome.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def clear_outcome(self) -> None:
        """Before a run: an outcome or failure left by the previous run must not be read as this run's."""
        self.outcome.unlink(missing_ok=True)
        self.failure.unlink(missing_ok=True)

    def write_failure(self, reason: str) -> None:
        """Any rank may write it (atomically, so a reader never sees half); the last writer's reason stays."""
        tmp = self.path / f".{FAILURE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(reason, encoding="utf-8")
        os.replace(tmp, self.failure)

    def failure_reason(self, offset: int) -> str | None:
        """Why this run failed: the reason its worker recorded, else the exception ending its output since
        `offset` (a worker that died before recording one), else None."""
        try:
            return self.failure.read_text(encoding="utf-8").strip() or None
        except OSError:
            return last_exception(self.log_tail(offset))
