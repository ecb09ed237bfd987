"""`chargpt export JOB[:best|latest] | CHECKPOINT_DIR --format hf|gguf|onnx --out DIR`."""

from __future__ import annotations

import argparse
import sys

from chargpt.errors import ChargptError
from chargpt.formats import FORMATS, GGUF_TYPES, ExportUnavailable
from chargpt_client.cli.common import SubParsers, UsageError, print_json, trainer_client
from chargpt_client.export import export_model, parse_source

EXIT_MISSING_EXTRA = 3  # as for plotting without matplotlib


def register(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    export = subparsers.add_parser(
        "export", parents=[parent], help="convert a checkpoint for transformers, llama.cpp or ONNX Runtime",
        description="Convert a trainer job's checkpoint (downloaded first) or a local checkpoint directory. "
                    "hf: a GPT-2 directory for transformers (and CTranslate2's converter); gguf: llama.cpp files; "
                    "onnx: a decoder with a key/value cache. Needs the export extra: pip install 'chargpt[export]'.")
    export.add_argument("source", metavar="JOB[:best|latest]|CHECKPOINT_DIR",
                        help="a job id (its best checkpoint, or :latest) or a checkpoint directory (a path)")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, metavar="DIR", help="the directory to create")
    export.add_argument("--gguf-type", action="append", choices=GGUF_TYPES, dest="gguf_types",
                        help="with --format gguf: a file per type (repeatable; default f32 and f16; q8_0 needs "
                             "n_embd divisible by 32)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.set_defaults(handler=export_cmd)


def export_cmd(args: argparse.Namespace) -> int:
    if args.gguf_types and args.format != "gguf":
        raise UsageError("--gguf-type applies to --format gguf only")
    try:
        directory, _, _ = parse_source(args.source)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if directory is not None and not directory.exists():
        raise UsageError(f"no such checkpoint directory: {directory}")
    try:
        with trainer_client(args) as trainer:  # connects only when a job's checkpoint is downloaded
            result = export_model(args.source, args.format, args.out, trainer=trainer, overwrite=args.overwrite,
                                  gguf_types=tuple(dict.fromkeys(args.gguf_types or ("f32", "f16"))))
    except ExportUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except ChargptError as exc:  # a bad checkpoint directory, --out in the way: the input's fault (server errors are
        # ChargptClientError, exit 1)
        raise UsageError(str(exc)) from exc
    if args.json:
        print_json(result)
    else:
        step = "" if result.step is None else f" (step {result.step})"
        print(f"exported {result.source}{step} to {result.path} ({result.format}): {', '.join(result.files)}")
    return 0
