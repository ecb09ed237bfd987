"""One training rank under torchrun for the DDP test (production runs ranks through trainer_service.jobs.worker).

    python -m torch.distributed.run --nproc_per_node 2 tests/trainer_service/training/ddp_ranks.py \\
        --plan plan.json --corpus corpus.json --job-dir JOB_DIR [--events events.jsonl] [--stop-file STOP]

plan.json is a TrainingPlan and corpus.json a CorpusRef (their pydantic JSON). Rank 0 appends every event as
one JSON line to --events; every rank polls --stop-file (training stops, with a `latest` checkpoint, once it
exists). With --summary-dir each rank writes rank<N>.json (outcome, events it emitted, a digest of its final
weights), which is how tests check that ranks agree and only rank 0 reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from chargpt.core.model import GPT
from trainer_service.training.api import CorpusRef, TrainingOutcome, TrainingPlan
from trainer_service.training.loop import Trainer
from trainer_service.training.runtime import process_group, resolve_runtime
from trainer_service.training.sinks import JsonLinesSink


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--events", type=Path, default=None)
    parser.add_argument("--stop-file", type=Path, default=None)
    parser.add_argument("--summary-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    plan = TrainingPlan.model_validate_json(args.plan.read_text(encoding="utf-8"))
    corpus = CorpusRef.model_validate_json(args.corpus.read_text(encoding="utf-8"))
    sink = JsonLinesSink(args.events)
    stop_file: Path | None = args.stop_file
    # What run_training does, keeping hold of the trainer for the summary.
    with process_group(resolve_runtime(plan)) as runtime:
        trainer = Trainer(plan, corpus, args.job_dir, sink, runtime)
        outcome = trainer.run(lambda: stop_file is not None and stop_file.exists())
    if args.summary_dir is not None:
        _write_summary(args.summary_dir, outcome, sink.count, trainer.model)


def _write_summary(directory: Path, outcome: TrainingOutcome, events: int, model: GPT) -> None:
    rank = int(os.environ.get("RANK", "0"))
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    directory.mkdir(parents=True, exist_ok=True)
    summary = {"rank": rank, "outcome": outcome.model_dump(), "events_emitted": events,
               "weights_sha256": digest.hexdigest()}
    (directory / f"rank{rank}.json").write_text(json.dumps(summary), encoding="utf-8")


if __name__ == "__main__":
    main()
