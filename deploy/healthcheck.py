"""Container health probe: asks a server's grpc.health.v1 service whether it is SERVING (exit 0) or not (1)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The health status name the server reports for `service` ("" is the whole server)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    # Exec-form HEALTHCHECKs get no shell, so the address may name environment variables and we expand them.
    parser.add_argument("address", help="host:port of the gRPC server, e.g. 127.0.0.1:${CHARGPT_TRAINER_PORT}")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    args.address = os.path.expandvars(args.address)
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        # RpcError from a blocking stub is also a grpc.Call; code() says why (UNAVAILABLE, DEADLINE_EXCEEDED, ...).
        code = error.code() if isinstance(error, grpc.Call) else None
        print(f"unhealthy: {args.address}: {code}", file=sys.stderr)
        return 1
    print(f"{args.address} {args.service or '<server>'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
