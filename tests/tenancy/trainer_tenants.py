"""A real in-process trainer with a keys file, and a real client per key (the tenancy tests' set-up)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chargpt_client import TrainerClient

from chargpt.server.tenancy.keys import create_key
from tests.client.conftest import FAST_RETRY, ServerThread, trainer_factory


@contextmanager
def tenant_trainer(root: Path, keys: dict[str, tuple[str, str]], **settings: Any) -> Iterator[dict[str, TrainerClient]]:
    """A trainer under `root` trusting one key per entry of `keys` (client name -> (tenant, role)); yields a
    client per name, each sending its own key."""
    keys_file = root / "keys.json"
    secrets = {name: create_key(keys_file, tenant, role)[0] for name, (tenant, role) in keys.items()}
    threads = ServerThread()
    _, address = threads.start(trainer_factory(root / "trainer", keys_file=keys_file, event_poll_seconds=0.05,
                                               **settings))
    clients = {name: TrainerClient(address, dataclasses.replace(FAST_RETRY, token=key))
               for name, key in secrets.items()}
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()
        threads.close()
