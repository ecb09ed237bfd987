"""The trainer store's tables, and the columns older databases gain when a newer server opens them."""

from __future__ import annotations

import sqlite3

from chargpt.server.tenancy.principal import SHARED_OWNER

SCHEMA = """
CREATE TABLE IF NOT EXISTS corpora (
    corpus_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    num_chars INTEGER NOT NULL, vocabulary TEXT NOT NULL, train_chars INTEGER NOT NULL,
    val_chars INTEGER NOT NULL, builtin INTEGER NOT NULL, created REAL NOT NULL, path TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT 'default', sha256 TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT UNIQUE NOT NULL, display_name TEXT NOT NULL,
    state TEXT NOT NULL, corpus_id TEXT NOT NULL, plan TEXT NOT NULL, parameter_count INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, train_loss REAL, val_loss REAL, best_val_loss REAL,
    tokens_per_second REAL NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, started REAL, finished REAL,
    executor TEXT NOT NULL DEFAULT 'local', cluster_job_id TEXT NOT NULL DEFAULT '',
    events_offset INTEGER NOT NULL DEFAULT 0, submitted REAL, cluster_run INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT 'default', priority INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_corpus ON jobs(corpus_id, state);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL, UNIQUE(job_id, seq));
"""
MIGRATIONS = {"executor": "TEXT NOT NULL DEFAULT 'local'", "cluster_job_id": "TEXT NOT NULL DEFAULT ''",
              "events_offset": "INTEGER NOT NULL DEFAULT 0", "submitted": "REAL",
              "cluster_run": "INTEGER NOT NULL DEFAULT 0", "owner": "TEXT NOT NULL DEFAULT 'default'",
              "priority": "INTEGER NOT NULL DEFAULT 0"}
# Corpora from before tenants: uploads belong to the default tenant, built-ins to everyone; ids were the sha256.
CORPUS_MIGRATIONS = {"owner": ("TEXT NOT NULL DEFAULT 'default'", f"UPDATE corpora SET owner = '{SHARED_OWNER}' "
                                                                   "WHERE builtin = 1"),
                     "sha256": ("TEXT NOT NULL DEFAULT ''", "UPDATE corpora SET sha256 = corpus_id")}


def create_or_migrate(conn: sqlite3.Connection) -> None:
    """Create missing tables; add the columns databases from before the executors or tenants lack."""
    conn.executescript(SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, ddl in MIGRATIONS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {ddl}")
    have = {row[1] for row in conn.execute("PRAGMA table_info(corpora)")}
    for name, (ddl, backfill) in CORPUS_MIGRATIONS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE corpora ADD COLUMN {name} {ddl}")
            conn.execute(backfill)
