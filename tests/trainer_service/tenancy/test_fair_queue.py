"""The scheduler's order of queued jobs: tenants in turn (the one served longest ago first), priority within one."""

from __future__ import annotations

from trainer_service.jobs.fair_queue import fair_order, over_running_limit
from trainer_service.store_records import JobRecord


def job(seq: int, owner: str, priority: int = 0) -> JobRecord:
    return JobRecord(seq=seq, job_id=f"{owner}-{seq}", display_name="", state="queued", corpus_id="c", plan="{}",
                     parameter_count=1, step=0, train_loss=None, val_loss=None, best_val_loss=None,
                     tokens_per_second=0.0, error="", cancel_requested=False, created=float(seq), started=None,
                     finished=None, owner=owner, priority=priority)


def ids(jobs: list[JobRecord]) -> list[str]:
    return [j.job_id for j in jobs]


def test_one_tenants_five_jobs_do_not_starve_anothers_one() -> None:
    queued = [job(i, "a") for i in range(1, 6)] + [job(6, "b")]
    assert ids(fair_order(queued, {}))[:2] == ["a-1", "b-6"]  # neither served yet: the older queue first
    assert ids(fair_order(queued[1:], {"a": 10.0})) == ["b-6", "a-2", "a-3", "a-4", "a-5"]  # a just ran a-1


def test_tenants_take_turns_the_one_served_longest_ago_first() -> None:
    queued = [job(1, "a"), job(2, "a"), job(3, "b"), job(4, "b"), job(5, "c")]
    order = fair_order(queued, {"a": 5.0, "b": 3.0})  # c never served, b longer ago than a
    assert ids(order) == ["c-5", "b-3", "a-1", "b-4", "a-2"]


def test_within_a_tenant_lower_priority_first_then_the_oldest() -> None:
    queued = [job(1, "a", 0), job(2, "a", 5), job(3, "a", -1), job(4, "a", 0)]
    assert ids(fair_order(queued, {})) == ["a-3", "a-1", "a-4", "a-2"]


def test_priority_does_not_jump_another_tenants_turn() -> None:
    queued = [job(1, "a", 0), job(2, "b", -10), job(3, "b", -10)]
    assert ids(fair_order(queued, {"b": 1.0, "a": 2.0})) == ["b-2", "a-1", "b-3"]


def test_a_tenant_at_its_running_limit_waits() -> None:
    assert over_running_limit(job(1, "a"), {"a": 2}, 2)
    assert not over_running_limit(job(1, "a"), {"a": 1}, 2)
    assert not over_running_limit(job(1, "a"), {"a": 99}, None)  # no limit
    assert over_running_limit(job(1, "b"), {}, 0)
