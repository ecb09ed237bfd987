"""`chargpt train`, `chargpt jobs list|show|watch|cancel|resume` and `chargpt checkpoints list|download`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from chargpt_client import types as t
from chargpt_client.cli.common import SubParsers, UsageError, print_json, trainer_client
from chargpt_client.ops import JOB_STATES
from chargpt_client.render import JobProgress, fmt, print_table
from chargpt_client.sync import TrainerClient
from chargpt_client.training import TrainingOptions, option_fields

ARCH_FLAGS = ("n_layer", "n_head", "n_embd", "block_size")
RECALIBRATE_POLL_SECONDS = 1.0  # `device --recalibrate` asks this often until the host is measured


def register(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    train = subparsers.add_parser("train", parents=[parent], help="start a training job and follow its progress")
    train.add_argument("corpus", help="corpus id, built-in name (shakespeare, python, startups) or a text file")
    train.add_argument("--preset", help="model size preset (see `chargpt device`), default auto")
    for name in ARCH_FLAGS:
        train.add_argument("--" + name.replace("_", "-"), type=int, help="custom architecture (all four needed)")
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--from", dest="init_from", metavar="JOB[:best|latest]|PATH",
                       help="fine-tune: start from a job's checkpoint (default best) or a checkpoint directory on "
                            "the trainer (a path with '/', inside its data directory) instead of random weights; "
                            "the architecture comes from it, and the defaults are a third of the size's learning "
                            "rate and a short warmup")
    hyper = train.add_argument_group("training (unset: the trainer's default for the model size)")
    for option in option_fields():  # one flag per TrainingSpec field, e.g. --weight-decay
        hyper.add_argument("--" + option.name.replace("_", "-"), type=option.kind, choices=option.choices,
                           help=option.help)
    train.add_argument("--device", default="", help="auto, cpu, cuda, cuda:N or mps")
    train.add_argument("--num-processes", type=int, help="DDP worker processes per node (default 1)")
    train.add_argument("--num-nodes", type=int,
                       help="nodes the job spans (default 1; more need the trainer's slurm or kubernetes executor)")
    train.add_argument("--priority", type=int, default=0,
                       help="order within your tenant's queue: lower starts first (default 0)")
    train.add_argument("--name", default="", help="display name")
    train.add_argument("--detach", action="store_true", help="print the job id and return immediately")
    train.set_defaults(handler=train_cmd)
    _register_jobs(subparsers, parent)
    _register_checkpoints(subparsers, parent)
    device = subparsers.add_parser("device", parents=[parent], help="the trainer's device and auto model size")
    device.add_argument("--recalibrate", action="store_true", help="measure the host again (seconds) instead of "
                        "showing the cached figures")
    device.set_defaults(handler=device_cmd)


def _register_jobs(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    jobs = subparsers.add_parser("jobs", help="list and control training jobs")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", parents=[parent], help="jobs, newest first")
    listing.add_argument("--state", action="append", default=[], choices=[s.lower() for s in JOB_STATES])
    listing.add_argument("--limit", type=int, metavar="N", help="the newest N jobs only, saying so when there are "
                         "more (default: every job)")
    listing.set_defaults(handler=jobs_list_cmd)
    for name, handler, help_text in (("show", jobs_show_cmd, "one job"),
                                     ("watch", jobs_watch_cmd, "follow a job's progress until it ends"),
                                     ("cancel", jobs_cancel_cmd, "cancel a job (its checkpoints are kept)"),
                                     ("resume", jobs_resume_cmd, "continue a cancelled or failed job")):
        cmd = sub.add_parser(name, parents=[parent], help=help_text)
        cmd.add_argument("job_id")
        cmd.set_defaults(handler=handler)


def _register_checkpoints(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    ckpts = subparsers.add_parser("checkpoints", help="list and download a job's checkpoints")
    sub = ckpts.add_subparsers(dest="checkpoints_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", parents=[parent], help="a job's checkpoints")
    listing.add_argument("job_id")
    listing.set_defaults(handler=checkpoints_list_cmd)
    download = sub.add_parser("download", parents=[parent], help="download and verify a checkpoint")
    download.add_argument("job_id")
    download.add_argument("--kind", choices=["best", "latest"], default="", help="default: best if any")
    download.add_argument("--output", "-o", help="directory to create (default ./<job>-<kind>)")
    download.add_argument("--overwrite", action="store_true")
    download.set_defaults(handler=checkpoints_download_cmd)


def _resolve_corpus(client: TrainerClient, corpus: str, json_output: bool) -> str:
    path = Path(corpus)
    if not path.is_file():
        return corpus
    result = client.upload_corpus(path.stem, path)
    if not json_output:
        print(f"uploaded {path} as corpus {result.corpus.corpus_id} ({result.corpus.num_chars:,} chars)",
              file=sys.stderr)
    return result.corpus.corpus_id


def _model_config(args: argparse.Namespace) -> t.ModelConfig | None:
    given = {name: getattr(args, name) for name in ARCH_FLAGS if getattr(args, name) is not None}
    if not given:
        return None
    if len(given) != len(ARCH_FLAGS) or args.preset:
        raise UsageError("a custom architecture needs all of --n-layer --n-head --n-embd --block-size "
                         "(and no --preset)")
    return t.ModelConfig(**given, dropout=args.dropout)


def train_cmd(args: argparse.Namespace) -> int:
    training = TrainingOptions(**{option.name: getattr(args, option.name) for option in option_fields()})
    with trainer_client(args) as client:
        corpus_id = _resolve_corpus(client, args.corpus, args.json)
        try:
            job = client.create_job(corpus_id, preset=args.preset, model=_model_config(args), training=training,
                                    display_name=args.name, device=args.device, num_processes=args.num_processes,
                                    num_nodes=args.num_nodes, init_from=args.init_from, priority=args.priority)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        budget = job.training.get("max_seconds")
        length = f"{budget:g} s" + (f" or {job.max_steps} steps" if job.max_steps else "") if budget \
            else f"{job.max_steps} steps"
        print(f"job {job.job_id}: {job.model.n_layer} layers x {job.model.n_embd} dims, "
              f"{job.parameter_count:,} parameters, {length}", file=sys.stderr)
        if job.parent is not None:
            print(f"fine-tuning from {job.parent.describe()}", file=sys.stderr)
        if args.detach:
            print_json(job) if args.json else print(job.job_id)
            return 0
        return follow(client, job.job_id, args.json)


def follow(client: TrainerClient, job_id: str, json_output: bool) -> int:
    """Watch until the job ends; exit status 1 if it failed."""
    progress = JobProgress()
    try:
        for event in client.watch_job(job_id):
            progress.handle(event)
    finally:
        progress.close()
    job = client.get_job(job_id)
    if json_output:
        print_json(job)
    else:
        print(f"{job.job_id} {job.state}: step {job.step}, best val loss {fmt(job.best_val_loss)}")
    if job.state == "FAILED":
        print(f"error: job failed: {job.error}", file=sys.stderr)
        return 1
    return 0


def device_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        report = client.device_info(recalibrate=args.recalibrate)
        while args.recalibrate and report.calibration == "pending":  # measured in the background: poll for it
            time.sleep(RECALIBRATE_POLL_SECONDS)
            report = client.device_info()
    if args.json:
        print_json(report)
        return 0
    d, m = report.device, report.auto_model
    print(f"device: {d.type} ({d.name}), {d.count} x {d.memory_bytes / 2**30:.1f} GiB, {d.cpu_cores} CPU cores, "
          f"bf16 {'yes' if d.bf16_supported else 'no'}")
    print(f"auto model: {m.n_layer} layers, {m.n_head} heads, {m.n_embd} dims, block {m.block_size}, "
          f"batch {report.auto_batch_size}")
    print(f"auto precision: {report.auto_precision or '-'}"
          + (" (the defaults: this host is still being measured)" if report.calibration == "pending" else ""))
    if report.gemm_gflops_fp32:
        rates = ", ".join(f"{name} {rate:,.0f}" for name, rate in report.candidate_tokens_per_second.items())
        print(f"measured: GEMM fp32 {report.gemm_gflops_fp32:,.0f} GFLOP/s, bf16 {report.gemm_gflops_bf16:,.0f} "
              f"GFLOP/s; training tokens/s {rates} (calibrated {fmt(report.calibrated_time)}, "
              f"{report.calibration_seconds:.1f} s)")
    print(f"presets: {', '.join(report.presets)}")
    return 0


def jobs_list_cmd(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    with trainer_client(args) as client:  # one more than the limit: whether it cut the list short
        jobs = client.list_jobs(args.state, limit=None if args.limit is None else args.limit + 1)
    if args.limit is not None and len(jobs) > args.limit:
        jobs = jobs[: args.limit]
        print(f"chargpt: the newest {args.limit} jobs only; there are more (raise --limit, or leave it out for "
              "every job)", file=sys.stderr)
    if args.json:
        print_json(jobs)
        return 0
    rows = [(j.job_id, j.display_name or "-", j.state, steps(j), j.best_val_loss,
             j.parameter_count, j.created_time) for j in jobs]
    print_table(["job", "name", "state", "step", "best val", "params", "created"], rows)
    return 0


def steps(job: t.TrainingJob) -> str:
    """The steps taken, of max_steps ("5/100"), or of a budget-only job ("5 (budget 90 s)")."""
    if job.max_steps is not None:
        return f"{job.step}/{job.max_steps}"
    return f"{job.step} (budget {job.training.get('max_seconds', 0):g} s)"


def jobs_show_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        job = client.get_job(args.job_id)
    if args.json:
        print_json(job)
        return 0
    m = job.model
    for label, value in (("job", job.job_id), ("name", job.display_name), ("state", job.state),
                         ("corpus", job.corpus_id), ("model", f"{m.n_layer} layers, {m.n_head} heads, "
                          f"{m.n_embd} dims, block {m.block_size}, vocab {m.vocab_size}"),
                         ("parameters", f"{job.parameter_count:,}"), ("step", steps(job)),
                         ("losses", f"train {fmt(job.train_loss)}, val {fmt(job.val_loss)}, "
                          f"best val {fmt(job.best_val_loss)}"), ("device", job.device or "-"),
                         ("budget", f"{job.training['max_seconds']:g} s" if job.training.get("max_seconds") else ""),
                         ("parent", job.parent.describe() if job.parent else ""),
                         ("created", fmt(job.created_time)), ("finished", fmt(job.finished_time)),
                         ("error", job.error)):
        if value:
            print(f"{label + ':':12} {value}")
    return 0


def jobs_watch_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        return follow(client, args.job_id, args.json)


def jobs_cancel_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        job = client.cancel_job(args.job_id)
    print_json(job) if args.json else print(f"{job.job_id} {job.state}")
    return 0


def jobs_resume_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        job = client.resume_job(args.job_id)
    print_json(job) if args.json else print(f"{job.job_id} {job.state}")
    return 0


def checkpoints_list_cmd(args: argparse.Namespace) -> int:
    with trainer_client(args) as client:
        checkpoints = client.list_checkpoints(args.job_id)
    if args.json:
        print_json(checkpoints)
        return 0
    rows = [(c.kind, c.step, c.train_loss, c.val_loss, c.size_bytes, c.weights_sha256[:16], c.created_time)
            for c in checkpoints]
    print_table(["kind", "step", "train loss", "val loss", "bytes", "sha256", "created"], rows)
    return 0


def checkpoints_download_cmd(args: argparse.Namespace) -> int:
    output = args.output or f"{args.job_id[:12]}-{args.kind or 'best'}"
    with trainer_client(args) as client:
        try:
            result = client.download_checkpoint(args.job_id, output, kind=args.kind, overwrite=args.overwrite)
        except FileExistsError as exc:
            raise UsageError(f"{exc}; pass --overwrite to replace it") from exc
    if args.json:
        print_json(result)
    else:
        print(f"downloaded {result.checkpoint.kind} checkpoint (step {result.checkpoint.step}) to {result.path}; "
              f"verified {len(result.files)} files")
    return 0
