"""Who may see and change what, the audit trail's JSON lines, and bounded per-tenant metric labels."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from chargpt.errors import NotFoundError, PermissionDeniedError
from chargpt.server.tenancy.audit import AuditLog
from chargpt.server.tenancy.labels import OVERFLOW_LABEL, TenantLabels
from chargpt.server.tenancy.principal import (
    DEFAULT_TENANT,
    SHARED_OWNER,
    SINGLE_USER,
    Principal,
    Role,
    acting_as,
    check_changeable,
    check_visible,
    current_principal,
    require_write,
)

ACME = Principal("acme", Role.MEMBER, "k1")
ACME_READER = Principal("acme", Role.READER, "k2")
ADMIN = Principal("ops", Role.ADMIN, "k3")


def test_without_keys_everyone_is_the_single_admin_user() -> None:
    assert current_principal() is SINGLE_USER
    assert SINGLE_USER.tenant == DEFAULT_TENANT and SINGLE_USER.is_admin
    check_changeable(DEFAULT_TENANT, "corpus c")  # today's behaviour: everything is yours


def test_another_tenants_thing_reads_exactly_as_missing() -> None:
    with acting_as(ACME):
        check_visible("acme", "job j")
        check_visible(SHARED_OWNER, "corpus shakespeare")
        with pytest.raises(NotFoundError) as err:
            check_visible("globex", "job j")
        assert str(err.value) == "job j not found"
        with pytest.raises(NotFoundError, match=r"^job j not found$"):
            check_changeable("globex", "job j")  # NOT_FOUND before PERMISSION_DENIED: existence never leaks
    assert current_principal() is SINGLE_USER  # acting_as restores the caller


def test_readers_read_admins_see_all_builtins_stay_read_only() -> None:
    with pytest.raises(PermissionDeniedError, match="reader"):
        check_changeable("acme", "corpus c", ACME_READER)
    with pytest.raises(PermissionDeniedError, match="reader"):
        require_write("create a job", ACME_READER)
    assert require_write("create a job", ACME) is ACME
    check_changeable("globex", "job j", ADMIN)
    for caller in (ACME, ADMIN):
        with pytest.raises(PermissionDeniedError, match="built-in"):
            check_changeable(SHARED_OWNER, "corpus shakespeare", caller)


async def test_concurrent_requests_keep_their_own_caller() -> None:
    async def handler(principal: Principal) -> str:
        with acting_as(principal):
            await asyncio.sleep(0.01)
            return current_principal().tenant

    assert await asyncio.gather(*(handler(Principal(f"t{i}", Role.MEMBER)) for i in range(20))) == \
        [f"t{i}" for i in range(20)]


def test_audit_lines_name_the_caller_and_the_action(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    with acting_as(ACME):
        log.record("delete", "corpus", "c1")
    log.record("load", "model", "m1", outcome="denied", principal=ADMIN, checkpoint="j1/best")
    lines = [json.loads(line) for line in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    assert [(e["tenant"], e["key_id"], e["role"], e["action"], e["resource"], e["id"], e["outcome"])
            for e in lines] == [("acme", "k1", "member", "delete", "corpus", "c1", "ok"),
                                ("ops", "k3", "admin", "load", "model", "m1", "denied")]
    assert lines[1]["checkpoint"] == "j1/best" and lines[0]["time"].endswith("+00:00")


def test_no_audit_path_keeps_nothing_and_a_write_failure_never_fails(tmp_path: Path) -> None:
    AuditLog(None).record("delete", "corpus", "c1")
    log = AuditLog(tmp_path / "audit.jsonl")
    (tmp_path / "audit.jsonl").mkdir()  # unwritable as a file
    log.record("delete", "corpus", "c1")


def test_tenant_labels_are_bounded() -> None:
    labels = TenantLabels(limit=3)
    assert [labels(t) for t in ("a", "b", "a", "c", "d", "e", "b")] == ["a", "b", "a", "c", OVERFLOW_LABEL,
                                                                         OVERFLOW_LABEL, "b"]
    assert len({labels(f"t{i}") for i in range(1000)}) == 1  # every later tenant shares one label
