"""Shared CLI plumbing: connection flags, client construction and JSON output (tables: chargpt_client.render)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chargpt_client import types as t
from chargpt_client.options import ClientOptions, TlsOptions
from chargpt_client.sync import InferenceClient, TrainerClient

Handler = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    SubParsers = argparse._SubParsersAction


class UsageError(Exception):
    """Bad command-line input that argparse cannot catch; exits with status 2."""


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (flags override CHARGPT_* environment variables)")
    group.add_argument("--trainer", metavar="HOST:PORT", help="trainer address ($CHARGPT_TRAINER_ADDRESS, "
                       "default 127.0.0.1:50051)")
    group.add_argument("--inference", metavar="HOST:PORT", help="inference address ($CHARGPT_INFERENCE_ADDRESS, "
                       "default 127.0.0.1:50052); dns:///host:port with --round-robin for replicas")
    group.add_argument("--token", "--api-key", dest="token", help="bearer token: the deployment's --auth-token or a "
                       "tenant's API key ($CHARGPT_TOKEN or $CHARGPT_API_KEY)")
    group.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds (default 60)")
    group.add_argument("--tls-ca", metavar="PEM", help="verify servers with these root certificates (enables TLS)")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--tls-key", metavar="PEM", help="client private key for mutual TLS")
    group.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    group.add_argument("--round-robin", action="store_true", help="balance over every resolved inference address")
    group.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def client_options(args: argparse.Namespace, round_robin: bool = False) -> ClientOptions:
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        try:
            tls = TlsOptions.from_files(args.tls_ca, args.tls_cert, args.tls_key)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from exc
    return ClientOptions.from_env(timeout=args.timeout, token=args.token, tls=tls, round_robin=round_robin)


def trainer_client(args: argparse.Namespace) -> TrainerClient:
    return TrainerClient(args.trainer, client_options(args))


def inference_client(args: argparse.Namespace) -> InferenceClient:
    return InferenceClient(args.inference, client_options(args, args.round_robin))


def print_json(value: Any) -> None:
    print(json.dumps(t.to_jsonable(value), indent=2, ensure_ascii=False))
