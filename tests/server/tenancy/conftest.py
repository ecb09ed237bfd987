"""Fixtures for the tenancy tests: real servers on a background loop, and the in-process inference factory."""

from __future__ import annotations

from tests.client.conftest import server_thread  # noqa: F401 - real servers for the sync client
from tests.inference_service.conftest import make_server  # noqa: F401 - the in-process inference fixture
