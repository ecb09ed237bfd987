"""The trainer's SQLite store (WAL): corpora, jobs and per-job event logs, shared by server and workers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chargpt.errors import NotFoundError
from chargpt.server.tenancy.principal import DEFAULT_TENANT
from trainer_service.store_records import QUEUED, RUNNING, STATES, SUCCEEDED, CorpusRecord, EventRecord, JobRecord
from trainer_service.store_schema import create_or_migrate


def connect(path: Path) -> sqlite3.Connection:
    """A WAL-mode connection in autocommit mode (transactions are explicit); waits up to 30 s for locks."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so sequence numbers cannot race."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def append_event(conn: sqlite3.Connection, job_id: str, kind: str, payload: dict[str, Any],
                 job_update: dict[str, Any] | None = None) -> EventRecord:
    """Append the job's next event (sequence = previous + 1) and apply `job_update` in the same transaction."""
    now = time.time()
    with transaction(conn):
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()
        seq = int(row[0])
        text = json.dumps(payload, allow_nan=True)
        cursor = conn.execute("INSERT INTO events (job_id, seq, time, kind, payload) VALUES (?, ?, ?, ?, ?)",
                              (job_id, seq, now, kind, text))
        if job_update:
            _update_job(conn, job_id, job_update)
    return EventRecord(id=int(cursor.lastrowid or 0), job_id=job_id, seq=seq, time=now, kind=kind, payload=payload)


_JOB_COLUMNS = frozenset(JobRecord.model_fields) - {"seq", "job_id"}


def _update_job(conn: sqlite3.Connection, job_id: str, values: dict[str, Any]) -> None:
    unknown = set(values) - _JOB_COLUMNS
    if unknown:
        raise ValueError(f"unknown job columns {sorted(unknown)}")
    assignments = ", ".join(f"{name} = ?" for name in values)
    conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), job_id))


class Store:
    """The server's handle on the database; every method is a short transaction (safe from threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = connect(path)
        self._lock = threading.Lock()
        create_or_migrate(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- corpora

    def put_corpus(self, record: CorpusRecord) -> tuple[CorpusRecord, bool]:
        """Insert unless the id exists; returns the stored record and whether it was created."""
        with self._lock, transaction(self._conn):
            existing = self._conn.execute("SELECT * FROM corpora WHERE corpus_id = ?",
                                          (record.corpus_id,)).fetchone()
            if existing is not None:
                return CorpusRecord(**dict(existing)), False
            fields = record.model_dump()
            self._conn.execute(f"INSERT INTO corpora ({', '.join(fields)}) VALUES "
                               f"({', '.join('?' for _ in fields)})", tuple(fields.values()))
        return record, True

    def get_corpus(self, corpus_id: str) -> CorpusRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM corpora WHERE corpus_id = ?", (corpus_id,)).fetchone()
        return CorpusRecord(**dict(row)) if row is not None else None

    def builtin_corpus_by_name(self, name: str) -> CorpusRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM corpora WHERE builtin = 1 AND name = ? ORDER BY created DESC",
                                     (name,)).fetchone()
        return CorpusRecord(**dict(row)) if row is not None else None

    def list_corpora(self, owners: Sequence[str] | None = None) -> list[CorpusRecord]:
        """Every corpus, or only those of `owners` (a tenant and SHARED_OWNER: what it may see)."""
        sql, args = "SELECT * FROM corpora", list[Any]()
        if owners is not None:
            sql += f" WHERE owner IN ({', '.join('?' for _ in owners)})"
            args += list(owners)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY builtin DESC, created, name", args).fetchall()
        return [CorpusRecord(**dict(r)) for r in rows]

    def delete_corpus_if_unused(self, corpus_id: str) -> CorpusRecord | None:
        """Delete the row unless an active job uses it; returns the deleted record, None if in use."""
        with self._lock, transaction(self._conn):
            row = self._conn.execute("SELECT * FROM corpora WHERE corpus_id = ?", (corpus_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"corpus {corpus_id!r} not found")
            in_use = self._conn.execute(
                "SELECT 1 FROM jobs WHERE corpus_id = ? AND state IN (?, ?) LIMIT 1",
                (corpus_id, QUEUED, RUNNING)).fetchone()
            if in_use is not None:
                return None
            self._conn.execute("DELETE FROM corpora WHERE corpus_id = ?", (corpus_id,))
        return CorpusRecord(**dict(row))

    def corpus_bytes(self, owner: str | None = None) -> int:
        """Bytes of corpus text stored, in all or of one owner."""
        sql, args = "SELECT COALESCE(SUM(size_bytes), 0) FROM corpora", list[Any]()
        if owner is not None:
            sql, args = sql + " WHERE owner = ?", [owner]
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    # ---- jobs

    def insert_job(self, job_id: str, display_name: str, corpus_id: str, plan_json: str,
                   parameter_count: int, owner: str = DEFAULT_TENANT, priority: int = 0) -> EventRecord:
        """A new QUEUED job and its first event; fails if the corpus row vanished meanwhile."""
        with self._lock:
            with transaction(self._conn):
                if self._conn.execute("SELECT 1 FROM corpora WHERE corpus_id = ?", (corpus_id,)).fetchone() is None:
                    raise NotFoundError(f"corpus {corpus_id!r} not found")
                self._conn.execute(
                    "INSERT INTO jobs (job_id, display_name, state, corpus_id, plan, parameter_count, created, "
                    "owner, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, display_name, QUEUED, corpus_id, plan_json, parameter_count, time.time(), owner,
                     priority))
            return append_event(self._conn, job_id, "state", {"state": QUEUED, "message": "created"})

    def insert_imported_job(self, job_id: str, display_name: str, plan_json: str, parameter_count: int, step: int,
                            val_loss: float | None, message: str, owner: str = DEFAULT_TENANT) -> EventRecord:
        """A finished job holding an imported model (no corpus, never run) and its one event."""
        now = time.time()
        with self._lock:
            with transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO jobs (job_id, display_name, state, corpus_id, plan, parameter_count, step, "
                    "val_loss, best_val_loss, created, started, finished, owner) "
                    "VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, display_name, SUCCEEDED, plan_json, parameter_count, step, val_loss, val_loss, now, now,
                     now, owner))
            return append_event(self._conn, job_id, "state", {"state": SUCCEEDED, "message": message})

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"training job {job_id!r} not found")
        return JobRecord(**dict(row))

    def list_jobs(self, states: Sequence[str], before_seq: int | None, limit: int,
                  owner: str | None = None) -> list[JobRecord]:
        """Newest first (by creation order), optionally only some states, one owner's, older than before_seq."""
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", list[Any]()
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            args += list(states)
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [JobRecord(**dict(r)) for r in rows]

    def jobs_in_state(self, state: str) -> list[JobRecord]:
        """Oldest first: the scheduler's queue order."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (state,)).fetchall()
        return [JobRecord(**dict(r)) for r in rows]

    def owner_jobs_since(self, owner: str, since: float) -> list[JobRecord]:
        """One tenant's jobs that are active, or started since `since` (its training-time budget)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM jobs WHERE owner = ? AND (state IN (?, ?) OR started >= ?)",
                                      (owner, QUEUED, RUNNING, since)).fetchall()
        return [JobRecord(**dict(r)) for r in rows]

    def count_by_owner_state(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._conn.execute("SELECT owner, state, COUNT(*) FROM jobs GROUP BY owner, state").fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def set_state(self, job_id: str, state: str, message: str = "", step: int | None = None,
                  **columns: Any) -> EventRecord:
        """Move a job to `state` and log the state-changed event (with the step it is at) atomically."""
        payload: dict[str, Any] = {"state": state, "message": message}
        if step is not None:
            payload["step"] = step
        with self._lock:
            return append_event(self._conn, job_id, "state", payload, {"state": state, **columns})

    def append_event(self, job_id: str, kind: str, payload: dict[str, Any],
                     job_update: dict[str, Any] | None = None) -> EventRecord:
        """A worker event the server picked up itself (cluster executors follow the job's events.jsonl)."""
        with self._lock:
            return append_event(self._conn, job_id, kind, payload, job_update)

    def count_by_executor_state(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._conn.execute("SELECT executor, state, COUNT(*) FROM jobs GROUP BY executor, state").fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def update_job(self, job_id: str, **columns: Any) -> None:
        with self._lock, transaction(self._conn):
            _update_job(self._conn, job_id, columns)

    # ---- events

    def events_after(self, job_id: str, after_seq: int, limit: int = 500) -> list[EventRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                      (job_id, after_seq, limit)).fetchall()
        return [_event(r) for r in rows]

    def events_since_id(self, after_id: int, limit: int = 1000) -> list[EventRecord]:
        """Every job's events by insertion order: how the server tails what workers write."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                      (after_id, limit)).fetchall()
        return [_event(r) for r in rows]

    def last_event_id(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


def _event(row: sqlite3.Row) -> EventRecord:
    values = dict(row)
    values["payload"] = json.loads(values["payload"])
    return EventRecord(**values)
