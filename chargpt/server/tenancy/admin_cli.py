"""`chargpt-admin keys create|revoke|list`: manage the hashed keys file both services read.

    chargpt-admin keys create --keys-file /etc/chargpt/keys.json --tenant acme --role member
    chargpt-admin keys revoke --keys-file /etc/chargpt/keys.json 3f2a9c01d4e5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from chargpt.errors import ChargptError
from chargpt.server.tenancy.keys import create_key, key_summary, read_entries, revoke_key
from chargpt.server.tenancy.principal import Role

KEYS_FILE_ENV = "CHARGPT_KEYS_FILE"  # a convenience for operators; the deploy manifests set it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargpt-admin", description="Administer a chargpt deployment.")
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="API keys per tenant").add_subparsers(dest="command", required=True)
    commands = {
        "create": keys.add_parser("create", help="create a key; it is printed once and stored only hashed"),
        "revoke": keys.add_parser("revoke", help="revoke a key by id; services stop accepting it within seconds"),
        "list": keys.add_parser("list", help="list keys (ids, tenants, roles; never secrets)"),
    }
    for sub in commands.values():
        sub.add_argument("--keys-file", type=Path, default=os.environ.get(KEYS_FILE_ENV),
                         help=f"the keys file (default: ${KEYS_FILE_ENV})")
    commands["create"].add_argument("--tenant", required=True)
    commands["create"].add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER.value)
    commands["revoke"].add_argument("key_id")
    return parser


def run(args: argparse.Namespace) -> str:
    """The command's output (the new key, for create)."""
    if args.keys_file is None:
        raise ChargptError(f"--keys-file (or ${KEYS_FILE_ENV}) is required")
    path = Path(args.keys_file)
    if args.command == "create":
        key, entry = create_key(path, args.tenant, args.role)
        print(f"created key {entry.key_id} for tenant {entry.tenant} ({entry.role}); it is shown only once:",
              file=sys.stderr)
        return key
    if args.command == "revoke":
        entry = revoke_key(path, args.key_id)
        return f"revoked key {entry.key_id} of tenant {entry.tenant}"
    return "\n".join(json.dumps(key_summary(e)) for e in read_entries(path).values())


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        output = run(args)
    except (ChargptError, ValueError, OSError) as exc:
        print(f"chargpt-admin: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if output:
        print(output)


if __name__ == "__main__":
    main()
