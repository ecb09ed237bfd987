"""API keys: shown once, stored only as salted scrypt hashes (mode 0600), checked strictly, reloaded without restart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargpt.errors import InvalidArgumentError, NotFoundError
from chargpt.server.tenancy import admin_cli
from chargpt.server.tenancy.interceptor import bearer_key
from chargpt.server.tenancy.keys import LEGACY_KEY_ID, KeyStore, create_key, read_entries, revoke_key
from chargpt.server.tenancy.principal import DEFAULT_TENANT, Principal, Role

ROOT = Path(__file__).resolve().parents[3]


def _secret(key: str) -> str:
    return key.split("_", 2)[2]


def test_the_file_holds_no_plaintext_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, entry = create_key(path, "acme", "member")
    other, _ = create_key(path, "globex", "reader")
    text = path.read_text()
    for plaintext in (key, _secret(key), other, _secret(other)):
        assert plaintext not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(text)["keys"]
    assert {item["tenant"] for item in stored} == {"acme", "globex"}
    assert all(item["kdf"] == "scrypt" and item["salt"] and item["hash"] for item in stored)
    assert len({item["salt"] for item in stored}) == 2  # salted per key
    assert key.startswith(f"cgk_{entry.key_id}_") and len(_secret(key)) >= 40


def test_a_key_resolves_to_its_tenant_and_role(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    member, entry = create_key(path, "acme", "member")
    reader, _ = create_key(path, "acme", "reader")
    store = KeyStore(path)
    assert store.authenticate(member) == Principal("acme", Role.MEMBER, entry.key_id)
    assert store.authenticate(reader).role is Role.READER  # type: ignore[union-attr]
    assert store.cached(member) == Principal("acme", Role.MEMBER, entry.key_id)  # verified once, then cached


def test_wrong_unknown_and_malformed_keys_fail(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, _ = create_key(path, "acme", "member")
    store = KeyStore(path)
    prefix, key_id, secret = key.split("_", 2)
    wrong_secret = f"{prefix}_{key_id}_{'A' * len(secret)}"
    unknown_id = f"{prefix}_{'0' * len(key_id)}_{secret}"
    for bad in (wrong_secret, unknown_id, f"xyz_{key_id}_{secret}", f"cgk_{key_id}", f"cgk_{key_id}_", secret,
                key_id, "", key + "x", key[:-1]):
        assert store.authenticate(bad) is None, bad
    assert store.authenticate(key) is not None


@pytest.mark.parametrize(("header", "key"), [
    ("Bearer abc", "abc"), ("bearer abc ", "abc"), (b"Bearer abc", "abc"), (None, ""), ("", ""),
    ("abc", ""), ("Basic abc", ""), ("Bearerabc", ""), ("Bearer", "")])
def test_bearer_header_parsing(header: str | bytes | None, key: str) -> None:
    assert bearer_key(header) == key


def test_revoked_and_new_keys_apply_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, entry = create_key(path, "acme", "member")
    store = KeyStore(path, reload_seconds=0.05)
    assert store.authenticate(key) is not None
    revoke_key(path, entry.key_id)
    newer, _ = create_key(path, "acme", "admin")
    time.sleep(0.1)
    assert store.authenticate(key) is None and store.cached(key) is None
    assert store.authenticate(newer).role is Role.ADMIN  # type: ignore[union-attr]
    with pytest.raises(NotFoundError):
        revoke_key(path, entry.key_id)


def test_a_broken_keys_file_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, _ = create_key(path, "acme", "member")
    store = KeyStore(path, reload_seconds=0.05)
    path.write_text("{not json")
    time.sleep(0.1)
    assert store.authenticate(key) is not None
    with pytest.raises(ValueError):
        KeyStore(path)  # at start-up the operator sees it


def test_chargpt_admin_names_a_damaged_keys_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    for damaged, says in (('{"format": "chargpt-keys/1", "keys": [{"key_id": "a"}]}', f"{path}: bad key entry"),
                          ('{"format": "other"}', f"{path}: not a chargpt keys file"), ("[1", "Expecting")):
        path.write_text(damaged)
        with pytest.raises(SystemExit) as exit_:
            admin_cli.main(["keys", "list", "--keys-file", str(path)])
        assert exit_.value.code == 1 and says in capsys.readouterr().err  # an error line, not a traceback


def test_the_legacy_token_is_an_admin_of_the_default_tenant(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, _ = create_key(path, "acme", "member")
    store = KeyStore(path, legacy_token="s3cret")
    assert store.authenticate("s3cret") == Principal(DEFAULT_TENANT, Role.ADMIN, LEGACY_KEY_ID)
    assert store.authenticate(key) is not None and store.authenticate("s3cret2") is None
    assert KeyStore(None, "s3cret").authenticate("s3cret") is not None
    with pytest.raises(ValueError):
        KeyStore(None, None)  # never an open door by accident


@pytest.mark.parametrize(("tenant", "role", "field"), [("Acme", "member", "tenant"), ("", "member", "tenant"),
                                                      ("a/b", "member", "tenant"), ("acme", "owner", "role")])
def test_bad_tenants_and_roles_are_refused(tmp_path: Path, tenant: str, role: str, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        create_key(tmp_path / "keys.json", tenant, role)
    assert err.value.field == field
    assert not (tmp_path / "keys.json").exists()


def _admin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "client")])
    return subprocess.run([sys.executable, "-m", "chargpt.server.tenancy.admin_cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})})


def test_chargpt_admin_create_list_revoke_as_a_process(tmp_path: Path) -> None:
    path = tmp_path / "secret" / "keys.json"
    created = _admin("keys", "create", "--keys-file", str(path), "--tenant", "acme", "--role", "reader")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("cgk_") and "shown only once" in created.stderr and key not in created.stderr
    assert KeyStore(path).authenticate(key) == Principal("acme", Role.READER, key.split("_")[1])
    listed = _admin("keys", "list", env={admin_cli.KEYS_FILE_ENV: str(path)})
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["tenant"], r["role"]) for r in rows] == [("acme", "reader")]
    assert _secret(key) not in listed.stdout and "hash" not in rows[0] and "salt" not in rows[0]
    revoked = _admin("keys", "revoke", "--keys-file", str(path), rows[0]["key_id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout and read_entries(path) == {}
    again = _admin("keys", "revoke", "--keys-file", str(path), rows[0]["key_id"])
    assert again.returncode == 1 and "not found" in again.stderr


def test_chargpt_admin_needs_a_keys_file_and_a_valid_tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(admin_cli.KEYS_FILE_ENV, raising=False)
    for argv in (["keys", "list"], ["keys", "create", "--keys-file", str(tmp_path / "k.json"), "--tenant", "A B"]):
        with pytest.raises(SystemExit) as exit_:
            admin_cli.main(argv)
        assert exit_.value.code == 1
    assert capsys.readouterr().err.count("chargpt-admin: error:") == 2
    admin_cli.main(["keys", "create", "--keys-file", str(tmp_path / "k.json"), "--tenant", "acme"])
    assert KeyStore(tmp_path / "k.json").authenticate(capsys.readouterr().out.strip()) is not None


@pytest.mark.parametrize("field, value", [("role", "superuser"), ("tenant", "Globex/../x")])
def test_a_hand_edited_entry_with_a_bad_role_or_tenant_is_refused(tmp_path: Path, field: str, value: str) -> None:
    path = tmp_path / "keys.json"
    _key, entry = create_key(path, "acme", "member")
    data = json.loads(path.read_text())
    data["keys"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"key {entry.key_id}"):
        read_entries(path)
    with pytest.raises(ValueError):  # at start-up: refused, not a key that fails every request
        KeyStore(path)


def test_guessing_a_key_ids_secret_is_cut_off_without_locking_out_a_verified_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, entry = create_key(path, "acme", "member")
    store = KeyStore(path)
    assert store.authenticate(key) is not None  # verified once: cached
    wrong = f"cgk_{entry.key_id}_" + "x" * 43
    for _ in range(5):
        assert store.authenticate(wrong) is None
    started = time.perf_counter()
    for _ in range(50):  # throttled: no KDF runs (scrypt takes tens of milliseconds each)
        assert store.authenticate(wrong + "y") is None
    assert time.perf_counter() - started < 0.5
    assert store.authenticate(key) == entry.principal()
