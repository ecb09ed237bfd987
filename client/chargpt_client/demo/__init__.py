"""`chargpt demo`: the notebook's eight steps against real services, with a report folder at the end."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from typing import TextIO

from chargpt.text import read_text
from chargpt_client.demo.context import Demo, DemoFailed, DemoOptions
from chargpt_client.demo.report import write_report
from chargpt_client.demo.steps_model import generalize, look_inside, write
from chargpt_client.demo.steps_train import show_architecture, show_corpus, show_device, show_tokenizer, train
from chargpt_client.options import ClientOptions
from chargpt_client.sync import Client

__all__ = ["DemoFailed", "DemoOptions", "run_demo"]

STEPS = (show_device, show_corpus, show_tokenizer, show_architecture, train, write, generalize, look_inside)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> Demo:
    """Run every step (starting local services unless both addresses are given) and write the report."""
    started = time.monotonic()
    own_text = read_text(options.text_file) if options.text_file else None  # exactly: CRLF, BOM and all
    with ExitStack() as stack:
        trainer, inference = options.trainer_address, options.inference_address
        if not (trainer and inference):
            print(f"Starting the trainer and inference services in this process (data in {options.data_dir}/)...",
                  file=out, flush=True)
            from launchers.local import LocalServices  # the server packages, only when starting them here

            services = stack.enter_context(LocalServices(options.data_dir, options.device))
            trainer, inference = services.trainer_address, services.inference_address
            print(f"  trainer on {trainer}, inference on {inference}", file=out, flush=True)
        client = stack.enter_context(Client(trainer, inference, ClientOptions.from_env(timeout=120.0)))
        demo = Demo(options=options, client=client, out=out, own_text=own_text)
        job_started = False
        try:
            for step in STEPS:
                step(demo)
                job_started = demo.findings.job is not None
        except BaseException:
            job = demo.findings.job
            if job_started and job is not None:
                client.trainer.cancel_job(job.job_id, timeout=10)  # do not leave a job training
            raise
        demo.findings.seconds = time.monotonic() - started
        path = write_report(demo)
        demo.say("")
        demo.say(f"Report: {path} (with loss.png, next_char.png, attention.png and summary.json) - done in "
                 f"{demo.findings.seconds:.0f} s.")
        return demo
