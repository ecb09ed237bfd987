"""Fixtures for the reliability suite: servers on a background loop (module-scoped) and tiny checkpoints."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.conftest import ServerThread
from tests.inference_service.conftest import make_server  # noqa: F401 - the in-process inference fixture


@pytest.fixture(scope="module")
def server_thread() -> Iterator[ServerThread]:
    threads = ServerThread()
    yield threads
    threads.close()
