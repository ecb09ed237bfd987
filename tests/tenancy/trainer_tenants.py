"""A real in-process trainer with a keys file, and a real client per key (the tenancy tests' set-up)."""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargpt_client import TrainerClient

from chargpt.server.tenancy.keys import create_key
from tests.client.conftest import FAST_RETRY, ServerThread, trainer_factory


@dataclass
class TenantTrainer:
    """The running trainer and a client per key."""

    clients: dict[str, TrainerClient]
    server: Any

    def __getitem__(self, name: str) -> TrainerClient:
        return self.clients[name]

    def metrics(self) -> str:
        port = self.server.metrics_endpoint.port
        return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())


@contextmanager
def tenant_trainer(root: Path, keys: dict[str, tuple[str, str]], **settings: Any) -> Iterator[TenantTrainer]:
    """A trainer under `root` (with /metrics on a free port) trusting one key per entry of `keys` (client name ->
    (tenant, role)); a client per name, each sending its own key."""
    keys_file = root / "keys.json"
    secrets = {name: create_key(keys_file, tenant, role)[0] for name, (tenant, role) in keys.items()}
    threads = ServerThread()
    server, address = threads.start(trainer_factory(root / "trainer", keys_file=keys_file, event_poll_seconds=0.05,
                                                    metrics_port=0, **settings))
    clients = {name: TrainerClient(address, dataclasses.replace(FAST_RETRY, token=key))
               for name, key in secrets.items()}
    try:
        yield TenantTrainer(clients, server)
    finally:
        for client in clients.values():
            client.close()
        threads.close()
