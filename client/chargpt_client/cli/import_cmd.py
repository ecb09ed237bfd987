"""`chargpt import nanogpt CKPT.pt [--meta META.pkl] --name NAME` and `chargpt import hf DIR --name NAME`."""

from __future__ import annotations

import argparse
import sys

from chargpt_client.cli.common import SubParsers, UsageError, print_json, trainer_client
from chargpt_client.errors import ChargptClientError

SOURCES = {"nanogpt": ("CKPT.pt", "nanoGPT's checkpoint (out-shakespeare-char/ckpt.pt)"),
           "hf": ("DIR", "a transformers GPT-2 directory: config.json, model.safetensors, tokenizer.json")}


def register(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    imports = subparsers.add_parser(
        "import", help="bring in a model trained elsewhere (nanoGPT, Hugging Face)",
        description="Upload a character-level model to the trainer, which converts it into a checkpoint held by a "
                    "finished job: its job id then works wherever a job's does (models load --job, export, "
                    "train --from). Pickles are read without running code in them.")
    sub = imports.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for format_name, (metavar, what) in SOURCES.items():
        command = sub.add_parser(format_name, parents=[parent], help=f"import {what}")
        command.add_argument("path", metavar=metavar, help=what)
        if format_name == "nanogpt":
            command.add_argument("--meta", metavar="META.pkl", help="the dataset's vocabulary "
                                 "(data/shakespeare_char/meta.pkl); a checkpoint without one is GPT-2 BPE")
        command.add_argument("--name", required=True, help="the imported job's display name")
        command.set_defaults(handler=import_cmd)


def import_cmd(args: argparse.Namespace) -> int:
    try:
        with trainer_client(args) as trainer:
            result = trainer.import_model(args.format, args.path, name=args.name, meta=getattr(args, "meta", None))
    except ChargptClientError:
        raise  # the server refused the files (InvalidArgument is a ValueError too): exit 1, as every command
    except (OSError, ValueError) as exc:  # a file not there: the command line's fault, found before connecting
        raise UsageError(str(exc)) from exc
    if args.json:
        print_json(result)
        return 0
    job, parent = result.job, result.job.parent
    print(f"imported {args.format} model {job.display_name!r} as job {job.job_id}: {job.model.n_layer} layers x "
          f"{job.model.n_embd} dims, {job.parameter_count:,} parameters, step {job.step}", file=sys.stderr)
    if parent is not None:
        print(f"origin: {parent.describe()}", file=sys.stderr)
    print(job.job_id)
    return 0
