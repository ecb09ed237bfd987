"""The `chargpt` command line: exit 0 ok, 1 server error (status and message on stderr), 2 usage, 3 a missing extra."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from chargpt import __version__
from chargpt_client.cli import corpus_cmds, demo_cmd, export_cmd, import_cmd, model_cmds, plot_cmds, train_cmds
from chargpt_client.cli.common import UsageError, add_connection_flags
from chargpt_client.errors import ChargptClientError, InvalidArgument
from chargpt_client.plots import PlottingUnavailable

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_MISSING_EXTRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt", description="Train and serve your own character-level GPT.",
        epilog="Start with `chargpt demo`. Every command takes --help.")
    parser.add_argument("--version", action="version", version=f"chargpt {__version__}")
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_flags(connection)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo_cmd.register(subparsers)
    corpus_cmds.register(subparsers, connection)
    train_cmds.register(subparsers, connection)
    model_cmds.register(subparsers, connection)
    plot_cmds.register(subparsers, connection)
    export_cmd.register(subparsers, connection)
    import_cmd.register(subparsers, connection)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # a command may take its positional list after options too (`score M a --file f b`): argparse alone stops
    # filling a positional once an option follows it
    trailing: str | None = getattr(args, "trailing_positionals", None)
    if extra:
        if trailing is None or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, trailing).extend(extra)
    try:
        return int(args.handler(args))
    except ChargptClientError as exc:
        print(f"error: {exc.status_name}: {exc.message}{_fields(exc)}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PlottingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fields(exc: ChargptClientError) -> str:
    """" (field: a, b)" naming the request fields the server flagged, for scripts that grep stderr."""
    fields = list(dict.fromkeys(v.field for v in exc.violations if v.field)) if isinstance(exc, InvalidArgument) else []
    return f" ({'fields' if len(fields) > 1 else 'field'}: {', '.join(fields)})" if fields else ""


if __name__ == "__main__":
    raise SystemExit(main())
