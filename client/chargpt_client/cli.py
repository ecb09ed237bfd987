"""The `chargpt` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from chargpt import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargpt", description="Train and serve your own character-level GPT.")
    parser.add_argument("--version", action="version", version=f"chargpt {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
