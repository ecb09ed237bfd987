"""`chargpt corpus upload|list|show|delete`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chargpt_client import types as t
from chargpt_client.cli.common import SubParsers, UsageError, print_json, print_table, trainer_client


def register(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    corpus = subparsers.add_parser("corpus", help="upload and manage training corpora")
    sub = corpus.add_subparsers(dest="corpus_command", metavar="COMMAND", required=True)

    upload = sub.add_parser("upload", parents=[parent], help="upload a UTF-8 text file ('-' reads stdin)")
    upload.add_argument("file", help="text file, or - for standard input")
    upload.add_argument("--name", help="corpus name (default: the file name without extension)")
    upload.add_argument("--description", default="")
    upload.set_defaults(handler=upload_cmd)

    sub.add_parser("list", parents=[parent], help="list corpora").set_defaults(handler=list_cmd)

    show = sub.add_parser("show", parents=[parent], help="show one corpus (id or built-in name)")
    show.add_argument("corpus")
    show.set_defaults(handler=show_cmd)

    delete = sub.add_parser("delete", parents=[parent], help="delete an uploaded corpus")
    delete.add_argument("corpus")
    delete.set_defaults(handler=delete_cmd)


def upload_cmd(args: argparse.Namespace) -> int:
    if args.file == "-":
        name = args.name or "stdin"
        source: bytes | Path = sys.stdin.buffer.read()
    else:
        source = Path(args.file)
        if not source.is_file():
            raise UsageError(f"no such file: {args.file}")
        name = args.name or source.stem
    with trainer_client(args) as client:
        result = client.upload_corpus(name, source, description=args.description)
    if args.json:
        print_json(result)
    else:
        verb = "uploaded" if result.created else "already stored"
        print(f"{verb}: {result.corpus.name} ({result.corpus.corpus_id})")
        show(result.corpus)
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        corpora = client.list_corpora()
    if args.json:
        print_json(corpora)
        return 0
    rows = [(c.corpus_id[:12] if not c.builtin else c.name, c.name, c.num_chars, len(c.vocabulary),
             "yes" if c.builtin else "no", c.created_time) for c in corpora]
    print_table(["id", "name", "chars", "vocab", "built-in", "created"], rows)
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        corpus = client.get_corpus(args.corpus)
    if args.json:
        print_json(corpus)
    else:
        show(corpus)
    return 0


def show(corpus: t.Corpus) -> None:
    print(f"  id:          {corpus.corpus_id}")
    print(f"  name:        {corpus.name}{'  (built-in)' if corpus.builtin else ''}")
    if corpus.description:
        print(f"  description: {corpus.description}")
    print(f"  size:        {corpus.num_chars:,} characters ({corpus.size_bytes:,} bytes)")
    print(f"  split:       {corpus.train_chars:,} train / {corpus.val_chars:,} validation characters")
    print(f"  vocabulary:  {len(corpus.vocabulary)} characters: {corpus.vocabulary!r}")


def delete_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        client.delete_corpus(args.corpus)
    if args.json:
        print_json({"deleted": args.corpus})
    else:
        print(f"deleted {args.corpus}")
    return 0
