"""`chargpt demo`: the whole notebook in one command, services included."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chargpt_client.cli.common import SubParsers, UsageError
from chargpt_client.demo.context import BUILTIN_CORPORA, DemoOptions
from chargpt_client.demo.steps_train import DEFAULT_TRAINING_MINUTES


def register(subparsers: SubParsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="train a model on a corpus and try it out, end to end (starts both services locally)",
        description="Walk through the notebook: device, corpus, tokenizer, architecture, training, writing, "
                    "perplexity in and out of domain, attention - and write a report folder.")
    source = demo.add_mutually_exclusive_group()
    source.add_argument("--corpus", choices=BUILTIN_CORPORA, default="shakespeare", help="built-in corpus")
    source.add_argument("--text-file", type=Path, help="train on your own UTF-8 text file instead")
    demo.add_argument("--prompt", help="a prompt to continue (default depends on the corpus)")
    demo.add_argument("--steps", type=int, help="train exactly this many steps (default: as many as fit "
                                                "--minutes, at most the device preset's schedule)")
    demo.add_argument("--minutes", type=float,
                      help=f"training time budget (default {DEFAULT_TRAINING_MINUTES:g}); a trial run measures "
                           "the speed, and training past 1.2x the budget is stopped, keeping the best checkpoint")
    demo.add_argument("--fast", action="store_true", help="a tiny model and a few steps (seconds; for tests)")
    demo.add_argument("--seed", type=int, default=1337)
    demo.add_argument("--data-dir", type=Path, default=Path("chargpt-data"))
    demo.add_argument("--report-dir", type=Path, default=Path("chargpt-report"))
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument("--sample-chars", type=int, help="characters per written sample (default 400; --fast 80)")
    demo.add_argument("--trainer", help="use a running trainer at HOST:PORT (with --inference) instead")
    demo.add_argument("--inference", help="use a running inference service at HOST:PORT (with --trainer)")
    demo.set_defaults(handler=demo_cmd)


def options_from(args: argparse.Namespace) -> DemoOptions:
    if args.text_file is not None and not args.text_file.is_file():
        raise UsageError(f"no such file: {args.text_file}")
    if bool(args.trainer) != bool(args.inference):
        raise UsageError("give both --trainer and --inference, or neither (to start them locally)")
    for name in ("steps", "minutes", "sample_chars"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    return DemoOptions(
        corpus=args.corpus, text_file=args.text_file, prompt=args.prompt, steps=args.steps, minutes=args.minutes,
        fast=args.fast, seed=args.seed, data_dir=args.data_dir, report_dir=args.report_dir, device=args.device,
        trainer_address=args.trainer, inference_address=args.inference,
        sample_chars=args.sample_chars or (80 if args.fast else 400), heldout_chars=600 if args.fast else 3000)


def demo_cmd(args: argparse.Namespace) -> int:
    from chargpt.text import TextDecodeError
    from chargpt_client.demo import DemoFailed, run_demo
    from launchers.local import ServicesUnavailable

    try:
        run_demo(options_from(args))
    except (ServicesUnavailable, TextDecodeError) as exc:
        raise UsageError(str(exc)) from exc
    except DemoFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
