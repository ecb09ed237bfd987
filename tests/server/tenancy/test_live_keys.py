"""Keys against running servers through the real client library and the `openai` client: a revoked key stops
working within seconds and a new one starts working, with no restart; the legacy token stays an admin key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from chargpt_client import ClientOptions, TrainerClient, Unauthenticated

from chargpt.server.tenancy.keys import create_key
from chargpt.v1 import inference_pb2
from tests.client.conftest import ServerThread, trainer_factory
from tests.inference_service.conftest import ServerFactory, write_checkpoint
from tests.inference_service.openai_api.conftest import base_url

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "legacy-admin-token"


def _admin_cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    done = subprocess.run([sys.executable, "-m", "chargpt.server.tenancy.admin_cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=True)
    return done.stdout.strip()


def _client(address: str, key: str) -> TrainerClient:
    return TrainerClient(address, ClientOptions(timeout=10, token=key))


def _within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long `condition` took to hold (fails after `seconds`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds}s"
        time.sleep(0.1)
    return time.monotonic() - started


def _refused(address: str, key: str) -> bool:
    try:
        with _client(address, key) as client:
            client.list_corpora()
    except Unauthenticated:
        return True
    return False


@pytest.fixture(scope="module")
def keyed_trainer(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A real trainer trusting a keys file (and the legacy token); its address and the keys file."""
    root = tmp_path_factory.mktemp("keyed")
    keys = root / "keys.json"
    create_key(keys, "bootstrap", "reader")  # the service starts with a keys file in place
    _, address = server_thread.start(trainer_factory(root / "trainer", builtin_corpora=False, keys_file=keys,
                                                     auth_token=TOKEN))
    return address, keys


def test_revoking_with_chargpt_admin_locks_a_running_client_out(keyed_trainer: tuple[str, Path]) -> None:
    address, keys = keyed_trainer
    key = _admin_cli("keys", "create", "--keys-file", str(keys), "--tenant", "acme", "--role", "member")
    _within(5.0, lambda: not _refused(address, key))  # the file is re-read at most once a second
    with _client(address, key) as client:
        assert client.list_corpora() == []
        _admin_cli("keys", "revoke", "--keys-file", str(keys), key.split("_")[1])
        took = _within(5.0, lambda: _refused(address, key))
        with pytest.raises(Unauthenticated, match="API key"):
            client.list_corpora()  # the same open channel is refused too
    assert took < 3.0  # reloaded within ~1 s of the change (plus a loaded machine's slack)


def test_a_new_key_works_without_a_restart(keyed_trainer: tuple[str, Path]) -> None:
    address, keys = keyed_trainer
    assert _refused(address, "cgk_000000000000_notyetcreated")
    key, _ = create_key(keys, "globex", "member")
    _within(5.0, lambda: not _refused(address, key))


@pytest.mark.parametrize("key", ["", "wrong", "cgk_", f"{TOKEN}x", "cgk_abcdefabcdef_secret"])
def test_bad_keys_are_unauthenticated(keyed_trainer: tuple[str, Path], key: str) -> None:
    assert _refused(keyed_trainer[0], key)


def test_the_legacy_token_still_works_as_admin(keyed_trainer: tuple[str, Path]) -> None:
    with _client(keyed_trainer[0], TOKEN) as client:
        assert client.list_jobs() == []


async def test_openai_client_with_a_tenant_key(make_server: ServerFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    key, _ = create_key(keys, "acme", "member")
    admin_key, _ = create_key(keys, "acme", "admin")  # a checkpoint_path load needs an admin key
    served = await make_server(http_port=0, keys_file=keys)
    write_checkpoint(served.models_dir / "tiny")
    request = inference_pb2.LoadModelRequest(name="tiny", checkpoint_path="tiny")
    await served.stub.LoadModel(request, metadata=(("authorization", f"Bearer {admin_key}"),), timeout=60)
    client = openai.AsyncOpenAI(base_url=base_url(served) + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in (await client.models.list()).data] == ["tiny"]
    reply = await client.completions.create(model="tiny", prompt="a", max_tokens=3, seed=1)
    assert len(reply.choices[0].text) == 3
    for bad in ("wrong", key + "x", key.replace("cgk_", "xyz_")):
        denied = openai.AsyncOpenAI(base_url=base_url(served) + "/v1", api_key=bad, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await denied.models.list()
        with pytest.raises(openai.AuthenticationError):
            await denied.completions.create(model="tiny", prompt="a", max_tokens=3)


def _cli(address: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CHARGPT_TRAINER_ADDRESS": address,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "chargpt_client.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_the_cli_takes_a_tenant_key_as_flag_or_environment(keyed_trainer: tuple[str, Path]) -> None:
    address, keys = keyed_trainer
    key, _ = create_key(keys, "initech", "reader")
    _within(5.0, lambda: not _refused(address, key))
    for args, env in ((["--api-key", key], {}), (["--token", key], {}), ([], {"CHARGPT_API_KEY": key}),
                      ([], {"CHARGPT_TOKEN": key, "CHARGPT_API_KEY": "ignored"})):
        listed = _cli(address, "corpus", "list", "--json", *args, env=env)
        assert listed.returncode == 0 and listed.stdout.strip() == "[]", (args, env, listed.stderr)
    denied = _cli(address, "corpus", "list", env={"CHARGPT_API_KEY": key + "x"})
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
