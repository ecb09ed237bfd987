"""Owners in the trainer's store: a database from before tenants migrates (uploads to the default tenant, built-ins
shared), corpus ids are namespaced per tenant, and the per-tenant job gauges stay bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chargpt.server.tenancy.labels import TenantLabels
from trainer_service.corpora.library import corpus_key
from trainer_service.metrics import TrainerMetrics
from trainer_service.store import Store
from trainer_service.store_records import CorpusRecord

OLD_SCHEMA = """
CREATE TABLE corpora (
    corpus_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    num_chars INTEGER NOT NULL, vocabulary TEXT NOT NULL, train_chars INTEGER NOT NULL,
    val_chars INTEGER NOT NULL, builtin INTEGER NOT NULL, created REAL NOT NULL, path TEXT NOT NULL);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT UNIQUE NOT NULL, display_name TEXT NOT NULL,
    state TEXT NOT NULL, corpus_id TEXT NOT NULL, plan TEXT NOT NULL, parameter_count INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, train_loss REAL, val_loss REAL, best_val_loss REAL,
    tokens_per_second REAL NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, started REAL, finished REAL);
INSERT INTO corpora VALUES ('aa', 'notes', '', 10, 10, 'abc', 9, 1, 0, 1.0, '/c/aa.txt');
INSERT INTO corpora VALUES ('bb', 'shakespeare', '', 10, 10, 'abc', 9, 1, 1, 1.0, '/c/bb.txt');
INSERT INTO jobs (job_id, display_name, state, corpus_id, plan, parameter_count, created)
    VALUES ('j1', '', 'succeeded', 'aa', '{}', 1, 1.0);
"""


def test_a_database_from_before_tenants_migrates(tmp_path: Path) -> None:
    path = tmp_path / "trainer.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    store = Store(path)
    try:
        uploaded, builtin = store.get_corpus("aa"), store.get_corpus("bb")
        assert uploaded is not None and (uploaded.owner, uploaded.sha256) == ("default", "aa")
        assert builtin is not None and (builtin.owner, builtin.sha256) == ("", "bb")
        job = store.get_job("j1")
        assert (job.owner, job.priority) == ("default", 0)
        assert [c.corpus_id for c in store.list_corpora(["acme", ""])] == ["bb"]
        assert store.list_jobs([], None, 10, owner="acme") == [] and len(store.list_jobs([], None, 10)) == 1
    finally:
        store.close()


def test_corpus_ids_are_namespaced_per_tenant() -> None:
    sha = "ab" * 32
    assert corpus_key("default", sha) == sha == corpus_key("", sha)  # as before tenants existed
    assert len({sha, corpus_key("acme", sha), corpus_key("beta", sha)}) == 3


def test_per_tenant_job_gauges_add_up_past_the_label_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "trainer.db")
    try:
        store.put_corpus(store_corpus())
        for n, owner in enumerate(["a", "a", "b", "c"]):
            store.insert_job(f"j{n}", "", "c1", "{}", 1, owner=owner)
        metrics = TrainerMetrics()
        metrics.tenant_label = TenantLabels(limit=1)
        metrics.tenant_label("a")  # the first tenant seen keeps its name; b and c share "other"
        metrics.refresh_store_gauges(store)
        value = metrics.registry.get_sample_value
        assert value("chargpt_trainer_tenant_jobs", {"tenant": "a", "state": "queued"}) == 2
        assert value("chargpt_trainer_tenant_jobs", {"tenant": "other", "state": "queued"}) == 2
    finally:
        store.close()


def store_corpus() -> CorpusRecord:
    return CorpusRecord(corpus_id="c1", name="c", description="", size_bytes=1, num_chars=1, vocabulary="a",
                        train_chars=1, val_chars=0, builtin=False, created=0.0, path="/c/c1.txt")
