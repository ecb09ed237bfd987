"""Event sinks that need no database: JSON lines in a file (torchrun launches, cluster nodes)."""

from __future__ import annotations

from pathlib import Path

from trainer_service.training.api import TrainingEvent


class JsonLinesSink:
    """Appends each event as a line of JSON, flushed at once so a watcher sees it immediately."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.count = path, 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: TrainingEvent) -> None:
        self.count += 1
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(event.model_dump_json() + "\n")
