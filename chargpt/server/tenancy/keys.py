"""API keys: created once and shown once, stored only as salted scrypt hashes in one keys file both services read.

The file (JSON, written atomically, mode 0600) is the single source of keys: mount it as a Kubernetes Secret and
every replica of both services picks up a new or revoked key within `reload_seconds`, without a restart.
A key reads `cgk_<key id>_<secret>`; the id selects its entry, the secret is checked against the entry's hash in
constant time. Verified keys are cached (by their SHA-256) until the file changes, so scrypt runs once per key.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chargpt.errors import InvalidArgumentError, NotFoundError
from chargpt.server.tenancy.principal import DEFAULT_TENANT, Principal, Role
from chargpt.server.tenancy.watched_file import WatchedFile

log = logging.getLogger(__name__)

FILE_FORMAT = "chargpt-keys/1"
KEY_PREFIX = "cgk"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# scrypt's interactive-login parameters (RFC 7914 §2): ~16 MiB and tens of milliseconds per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
LEGACY_KEY_ID = "auth-token"
MAX_FAILURES, FAILURE_WINDOW_SECONDS = 5, 60.0  # wrong secrets per key id before guessing is cut off


@dataclass(frozen=True)
class KeyEntry:
    """One stored key: who it is for, and the salted hash of its secret (never the secret)."""

    key_id: str
    tenant: str
    role: str
    salt: str  # base64
    hash: str  # base64 scrypt(secret, salt)
    created: str
    kdf: str = "scrypt"
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def principal(self) -> Principal:
        return Principal(tenant=self.tenant, role=Role(self.role), key_id=self.key_id)

    def matches(self, secret: str) -> bool:
        if self.kdf != "scrypt":
            return False
        derived = _scrypt(secret, base64.b64decode(self.salt), self.n, self.r, self.p)
        return hmac.compare_digest(derived, base64.b64decode(self.hash))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def validate_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.match(tenant):
        raise InvalidArgumentError("tenant", "1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or "
                                             f"digit (got {tenant!r})")
    return tenant


def new_key(tenant: str, role: str) -> tuple[str, KeyEntry]:
    """A fresh key (to show once) and the entry to store for it."""
    validate_tenant(tenant)
    try:
        Role(role)
    except ValueError:
        raise InvalidArgumentError("role", f"one of {', '.join(r.value for r in Role)} (got {role!r})") from None
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    entry = KeyEntry(key_id=key_id, tenant=tenant, role=role, salt=base64.b64encode(salt).decode(),
                     hash=base64.b64encode(digest).decode(), created=datetime.now(UTC).isoformat(timespec="seconds"))
    return f"{KEY_PREFIX}_{key_id}_{secret}", entry


def read_entries(path: Path) -> dict[str, KeyEntry]:
    """The keys file's entries by key id; a missing file has none."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a chargpt keys file (format {FILE_FORMAT})")
    try:
        entries = [KeyEntry(**item) for item in data.get("keys", [])]
    except TypeError as exc:  # a missing or unknown field: the same operator-facing error as a bad format
        raise ValueError(f"{path}: bad key entry ({exc})") from None
    for entry in entries:  # a hand-edited entry must not become a key that fails every request
        try:
            Role(entry.role)
            validate_tenant(entry.tenant)
        except ValueError as exc:
            raise ValueError(f"{path}: key {entry.key_id}: {exc}") from None
    return {e.key_id: e for e in entries}


def _write_entries(path: Path, entries: dict[str, KeyEntry]) -> None:
    """Replace the file atomically (readers see the old or the new file, never half of one), mode 0600."""
    body = json.dumps({"format": FILE_FORMAT, "keys": [asdict(e) for e in entries.values()]}, indent=1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise admin commands editing the same keys file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def create_key(path: Path, tenant: str, role: str) -> tuple[str, KeyEntry]:
    """Add a key for `tenant` with `role` to the keys file; returns the key (shown once) and its entry."""
    key, entry = new_key(tenant, role)
    with _locked(path):
        entries = read_entries(path)
        entries[entry.key_id] = entry
        _write_entries(path, entries)
    return key, entry


def revoke_key(path: Path, key_id: str) -> KeyEntry:
    """Remove a key from the keys file; services stop accepting it within their reload interval."""
    with _locked(path):
        entries = read_entries(path)
        entry = entries.pop(key_id, None)
        if entry is None:
            raise NotFoundError(f"key {key_id!r} not found in {path}")
        _write_entries(path, entries)
    return entry


class KeyStore:
    """Resolves bearer keys to principals from the keys file (re-read when it changes) and the legacy token."""

    def __init__(self, path: Path | None, legacy_token: str | None = None, reload_seconds: float = 1.0) -> None:
        if path is None and not legacy_token:
            raise ValueError("a KeyStore needs a keys file or a token, or everyone would be let in")
        self._legacy = legacy_token.encode() if legacy_token else None
        self._verified: dict[bytes, Principal] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # key id -> (wrong secrets, since when)
        if path is not None and not path.exists():
            log.warning("keys file %s does not exist (yet): only %s", path,
                        "the auth token works" if legacy_token else "no key works until it is created")
        self._file = WatchedFile(path, read_entries, reload_seconds, self._forget) if path is not None else None

    def _entries(self) -> dict[str, KeyEntry]:
        return self._file.value() if self._file is not None else {}

    def _forget(self, _entries: dict[str, KeyEntry]) -> None:
        self._verified = {}  # the file changed: every key is checked again (a revoked one fails)

    def cached(self, key: str) -> Principal | None:
        """The principal for an already verified key (no KDF work), after a reload check."""
        self._entries()
        return self._verified.get(_fingerprint(key))

    def authenticate(self, key: str) -> Principal | None:
        """The principal a key stands for, or None for an unknown, malformed or revoked key."""
        hit = self.cached(key)
        if hit is not None:
            return hit
        verified = self._verified  # a reload during the KDF replaces it: this result then dies with the old one
        if self._legacy is not None and hmac.compare_digest(key.encode(), self._legacy):
            principal: Principal | None = Principal(DEFAULT_TENANT, Role.ADMIN, LEGACY_KEY_ID)
        else:
            principal = self._verify(key)
        if principal is not None:
            verified[_fingerprint(key)] = principal
        return principal

    def _verify(self, key: str) -> Principal | None:
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        entry = self._entries().get(key_id) if prefix == KEY_PREFIX and secret else None
        if entry is None or self._throttled(key_id):
            return None
        if entry.matches(secret):
            return entry.principal()
        count, since = self._failures.get(key_id, (0, time.monotonic()))
        self._failures[key_id] = (count + 1, since)
        return None

    def _throttled(self, key_id: str) -> bool:
        """True once a key id had MAX_FAILURES wrong secrets within FAILURE_WINDOW_SECONDS: guessing is refused
        without running the KDF, so a flood of wrong secrets cannot keep the CPU busy. A key verified before
        stays cached and keeps working."""
        count, since = self._failures.get(key_id, (0, 0.0))
        if time.monotonic() - since > FAILURE_WINDOW_SECONDS:
            self._failures.pop(key_id, None)
            return False
        return count >= MAX_FAILURES


def _fingerprint(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_summary(entry: KeyEntry) -> dict[str, Any]:
    """What an admin may see of a key: never its hash or salt."""
    return {"key_id": entry.key_id, "tenant": entry.tenant, "role": entry.role, "created": entry.created}
