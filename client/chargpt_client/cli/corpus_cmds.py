"""`chargpt corpus upload|list|show|read|delete`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chargpt_client import types as t
from chargpt_client.cli.common import SubParsers, UsageError, print_json, trainer_client
from chargpt_client.ops import CORPUS_SPLITS, MAX_READ_CHARS
from chargpt_client.render import print_table


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

    read = sub.add_parser("read", parents=[parent], help="print characters of a corpus or of its train or "
                          "validation split, exactly as stored")
    read.add_argument("corpus", help="corpus id or built-in name")
    read.add_argument("--split", choices=list(CORPUS_SPLITS), default="all")
    read.add_argument("--offset", type=int, default=0, help="first character; negative counts from the end")
    read.add_argument("--length", type=int, default=1000, help=f"characters, 1-{MAX_READ_CHARS} (default 1000)")
    read.set_defaults(handler=read_cmd)

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
    rows = [(c.corpus_id if not c.builtin else c.name, c.name, c.num_chars, len(c.vocabulary),
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


def read_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        result = client.read_corpus(args.corpus, args.split, args.offset, args.length)
    if args.json:
        print_json(result)
    else:  # the bytes of the text, so that no line ending is translated on the way out
        sys.stdout.flush()
        sys.stdout.buffer.write(result.text.encode("utf-8"))
        sys.stdout.buffer.flush()
    return 0


def delete_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        client.delete_corpus(args.corpus)
    if args.json:
        print_json({"deleted": args.corpus})
    else:
        print(f"deleted {args.corpus}")
    return 0
