"""The shared metrics endpoint serves a per-server registry and counts RPCs by method and code."""

import urllib.request

import grpc
from prometheus_client import CollectorRegistry

from chargpt.server.metrics import MetricsEndpoint, RpcMetrics
from chargpt.server.settings import ServerSettings


async def test_endpoint_serves_rpc_counts() -> None:
    registry = CollectorRegistry()
    rpcs = RpcMetrics(registry, "chargpt_test")
    rpcs.observe("/chargpt.v1.TrainerService/GetCorpus", grpc.StatusCode.NOT_FOUND)
    endpoint = MetricsEndpoint(ServerSettings(metrics_port=0), registry)
    await endpoint.start()
    try:
        assert endpoint.port
        body = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5).read().decode()
    finally:
        await endpoint.stop()
    assert 'chargpt_test_rpcs_total{code="NOT_FOUND",method="GetCorpus"} 1.0' in body


async def test_disabled_without_a_port() -> None:
    endpoint = MetricsEndpoint(ServerSettings(), CollectorRegistry())
    await endpoint.start()
    assert endpoint.port is None
    await endpoint.stop()
