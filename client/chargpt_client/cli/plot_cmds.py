"""`chargpt attention` (a PNG grid of heatmaps) and `chargpt plot` (a PNG of a job's loss curves)."""

from __future__ import annotations

import argparse

from chargpt_client import plots
from chargpt_client import types as t
from chargpt_client.cli.common import SubParsers, inference_client, print_json, trainer_client
from chargpt_client.sync import TrainerClient


def register(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    att = subparsers.add_parser("attention", parents=[parent],
                                help="PNG grid of attention heatmaps, one per layer and head")
    att.add_argument("model")
    att.add_argument("text", help="text to look at (at most the model's block size)")
    att.add_argument("--output", "-o", default="attention.png")
    att.add_argument("--layer", type=int, action="append", default=[], help="only this layer (repeatable)")
    att.add_argument("--head", type=int, action="append", default=[], help="only this head (repeatable)")
    att.set_defaults(handler=attention_cmd)
    plot = subparsers.add_parser("plot", parents=[parent], help="PNG of a job's train/validation loss curves")
    plot.add_argument("job_id")
    plot.add_argument("--output", "-o", default="loss.png")
    plot.set_defaults(handler=plot_cmd)


def attention_cmd(args: argparse.Namespace) -> int:
    plots.require()  # fail early with a clear message when matplotlib is missing
    with inference_client(args) as client:
        attention = client.attention(args.model, args.text, layers=args.layer, heads=args.head)
    plots.attention_grid(attention, args.output, title=f"{args.model}: attention over {args.text!r}")
    if args.json:
        print_json({"output": args.output, "layers": attention.layers, "heads": attention.heads,
                    "tokens": attention.tokens})
    else:
        print(f"wrote {args.output} ({len(attention.layers)} layers x {len(attention.heads)} heads, "
              f"{len(attention.tokens)} characters)")
    return 0


def plot_cmd(args: argparse.Namespace) -> int:
    plots.require()
    with trainer_client(args) as client:
        events = job_history(client, args.job_id)
    points = plots.loss_curves(events, args.output, title=f"job {args.job_id}")
    print_json({"output": args.output, "points": points}) if args.json else \
        print(f"wrote {args.output} ({points} points)")
    return 0


def job_history(client: TrainerClient, job_id: str) -> list[t.JobEvent]:
    """A job's events so far: the whole history of a finished job, or a running one's up to its current step."""
    job = client.get_job(job_id)
    if job.finished:
        return list(client.watch_job(job_id))
    events: list[t.JobEvent] = []
    if job.step == 0:
        return events
    for event in client.watch_job(job_id):
        events.append(event)
        if isinstance(event, t.Progress) and event.step >= job.step:
            break
    return events
