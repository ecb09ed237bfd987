"""A file re-read when it changes (checked at most once per interval), for settings that must apply without a
restart: a revoked key, a raised quota."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class WatchedFile(Generic[T]):
    """`value()` is `parse(path)` as of the last change seen; an unreadable new version keeps the previous one."""

    def __init__(self, path: Path, parse: Callable[[Path], T], reload_seconds: float = 1.0,
                 on_change: Callable[[T], None] | None = None) -> None:
        self.path, self._parse, self.reload_seconds, self._on_change = path, parse, reload_seconds, on_change
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._value = parse(path)  # a broken file at start-up is an error the operator must see
        self._stamp = _stamp(path)
        self._checked = time.monotonic()

    def value(self) -> T:
        now = time.monotonic()
        if now - self._checked >= self.reload_seconds:
            self._checked = now
            self._reload_if_changed()
        return self._value

    def _reload_if_changed(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        try:
            value = self._parse(self.path)
        except (OSError, ValueError, TypeError) as exc:
            log.error("%s unreadable, keeping its previous version: %s", self.path, exc)
            return
        with self._lock:
            self._value, self._stamp = value, stamp
        log.info("%s changed: reloaded", self.path)
        if self._on_change is not None:
            self._on_change(value)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
