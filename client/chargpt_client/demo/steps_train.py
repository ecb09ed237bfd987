"""Demo steps 1-5: the device, the corpus, the tokenizer, the architecture, and training."""

from __future__ import annotations

import time
from typing import Any

from chargpt_client import types as t
from chargpt_client.demo.context import Demo, DemoFailed
from chargpt_client.render import JobProgress
from chargpt_client.tokenizer import CharMapping
from chargpt_client.training import TrainingOptions

FAST_MODEL = t.ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0)
FAST_STEPS = 30
DEFAULT_TRAINING_MINUTES = 3.5  # fits `make demo` in about 5 minutes on a 2-core CPU
TIME_CAP_FACTOR = 1.2  # stop (keeping the best checkpoint) if training overruns its budget this much
TRIAL_STEPS, TRIAL_SECONDS = 200, 4.0
BUDGET_SHARE_FOR_STEPS = 0.9  # the rest goes to samples and checkpoints; evaluations are counted apart
MIN_STEPS = 50
SAMPLES_PER_RUN = 6
EVALS_PER_RUN = 4


def show_device(demo: Demo) -> None:
    demo.step(1, "The device")
    report = demo.client.trainer.device_info()
    demo.findings.device = report
    d, m = report.device, report.auto_model
    memory = f"{d.memory_bytes / 2**30:.1f} GiB {'memory' if d.type == 'cpu' else 'per device'}"
    demo.say(f"Found: {d.type.upper()} - {d.name or 'unknown'} ({d.count} device(s), {memory}, "
             f"{d.cpu_cores} CPU cores, bf16 {'yes' if d.bf16_supported else 'no'})")
    demo.say(f"Model size chosen for it: preset '{report.auto_preset or 'auto'}' = {m.n_layer} layers x "
             f"{m.n_head} heads x {m.n_embd} dims, {m.block_size}-character context, batch {report.auto_batch_size}")
    if demo.options.fast:
        demo.say(f"(--fast: a tiny {FAST_MODEL.n_layer}-layer, {FAST_MODEL.n_embd}-dim model instead, "
                 f"{FAST_STEPS} steps - expect noise, not words)")


def show_corpus(demo: Demo) -> None:
    demo.step(2, "The corpus")
    opts = demo.options
    if opts.text_file is not None:
        result = demo.client.trainer.upload_corpus(opts.text_file.stem, opts.text_file,
                                                   description=f"uploaded by chargpt demo from {opts.text_file}")
        corpus = result.corpus
        demo.say(f"Uploaded your text {opts.text_file} ({'new' if result.created else 'already stored'}).")
    else:
        corpus = demo.client.trainer.get_corpus(opts.corpus)
        demo.say(f"Built-in corpus '{corpus.name}': {corpus.description}")
    demo.findings.corpus = corpus
    demo.say(f"{corpus.num_chars:,} characters ({corpus.size_bytes:,} bytes), id {corpus.corpus_id[:16]}...")
    demo.say(f"Split: the first 90% for training ({corpus.train_chars:,} chars), the last 10% held out for "
             f"validation ({corpus.val_chars:,} chars).")


def show_tokenizer(demo: Demo) -> None:
    demo.step(3, "The tokenizer")
    corpus = demo.findings.corpus
    assert corpus is not None
    mapping = CharMapping(corpus.vocabulary)
    demo.say(f"Character-level: every distinct character is a token. Vocabulary size: {mapping.vocab_size}")
    demo.say(f"Vocabulary: {corpus.vocabulary!r}")
    text = "".join(ch for ch in demo.profile.attention_text if ch in corpus.vocabulary)[:24] or corpus.vocabulary[:8]
    ids = mapping.encode(text)
    decoded = mapping.decode(ids)
    demo.findings.roundtrip = (text, ids, decoded)
    demo.say(f"encode({text!r}) = {ids}")
    demo.say(f"decode(...) = {decoded!r}  -> round trip {'OK' if decoded == text else 'FAILED'}")


def _seconds_per_step(demo: Demo, corpus_id: str) -> float | None:
    """Time a short trial run of the same model on this machine (stopped once a few steps are measured)."""
    trainer = demo.client.trainer
    device = "" if demo.options.device == "auto" else demo.options.device
    trial = trainer.create_job(corpus_id, display_name="demo-speed-trial", device=device, training=TrainingOptions(
        max_steps=TRIAL_STEPS, eval_interval=0, sample_interval=0, seed=demo.options.seed))
    first: t.Progress | None = None
    rate: float | None = None
    for event in trainer.watch_job(trial.job_id):
        if not isinstance(event, t.Progress):
            continue
        if first is None:
            first = event  # includes start-up costs: measure from here
        elif event.step > first.step and event.elapsed_seconds - first.elapsed_seconds >= TRIAL_SECONDS:
            rate = (event.elapsed_seconds - first.elapsed_seconds) / (event.step - first.step)
            trainer.cancel_job(trial.job_id)
            break
    if rate is None:  # the trial finished before TRIAL_SECONDS: use its whole run
        job = trainer.get_job(trial.job_id)
        rate = job.model.block_size * job.training.get("batch_size", 1) / job.tokens_per_second \
            if job.tokens_per_second > 0 else None
    return rate


def _fitted_steps(demo: Demo, corpus: t.Corpus, per_step: float, preset_steps: int | None) -> int:
    """Steps that fit the budget once the evaluations (forward passes over the validation split) are paid for."""
    report = demo.findings.device
    assert report is not None
    tokens_per_step = report.auto_batch_size * report.auto_model.block_size
    # An evaluation reads the validation split plus up to 256 windows of training text, forward only (about a
    # third of a training step's work per token).
    block = report.auto_model.block_size
    eval_steps = (corpus.val_chars + min(256 * block, corpus.val_chars)) / (3 * tokens_per_step)
    budget_steps = 60 * (demo.options.minutes or DEFAULT_TRAINING_MINUTES) / per_step
    fitted = int(BUDGET_SHARE_FOR_STEPS * budget_steps - EVALS_PER_RUN * eval_steps)
    steps = max(MIN_STEPS, fitted)
    return min(steps, preset_steps) if preset_steps else steps


def _training_fields(demo: Demo, corpus: t.Corpus) -> dict[str, Any]:
    opts = demo.options
    report = demo.findings.device
    steps = opts.steps
    if opts.fast:
        steps = steps or FAST_STEPS
    elif steps is None:
        preset_steps = report.auto_max_steps or None if report is not None else None
        minutes = opts.minutes or DEFAULT_TRAINING_MINUTES
        demo.say(f"Measuring this machine's training speed with a short trial run (budget: {minutes:g} min)...")
        per_step = _seconds_per_step(demo, corpus.corpus_id)
        if per_step:
            steps = _fitted_steps(demo, corpus, per_step, preset_steps)
            demo.say(f"  {per_step:.2f} s per step here: {steps} steps and {EVALS_PER_RUN} evaluations fit the "
                     "budget" + (f" (the preset's full schedule is {preset_steps} steps)" if preset_steps else ""))
    fields: dict[str, Any] = {"seed": opts.seed, "sample_length": 200 if not opts.fast else 80}
    if steps:
        evals, samples = (2, 3) if opts.fast else (EVALS_PER_RUN, SAMPLES_PER_RUN)
        # Rounded up, so the last regular evaluation is the final one rather than a step or two before it.
        fields.update(max_steps=steps, sample_interval=-(-steps // samples), eval_interval=-(-steps // evals))
    return fields


def show_architecture(demo: Demo) -> None:
    demo.step(4, "The architecture")
    corpus = demo.findings.corpus
    assert corpus is not None
    model = FAST_MODEL if demo.options.fast else None
    device = "" if demo.options.device == "auto" else demo.options.device
    fields = _training_fields(demo, corpus)
    job = demo.client.trainer.create_job(corpus.corpus_id, model=model, device=device,
                                         display_name=f"demo-{demo.options.corpus_label}",
                                         training=TrainingOptions(**fields))
    demo.findings.job = job
    m = job.model
    demo.say("A decoder-only transformer (nanoGPT layout): token + position embeddings, then")
    demo.say(f"{m.n_layer} blocks of [LayerNorm -> {m.n_head}-head causal self-attention -> LayerNorm -> 4x MLP],")
    demo.say(f"a final LayerNorm and a linear head back to the {m.vocab_size} characters (tied to the embedding).")
    demo.say(f"  n_layer={m.n_layer} n_head={m.n_head} n_embd={m.n_embd} block_size={m.block_size} "
             f"vocab_size={m.vocab_size} dropout={m.dropout:g}")
    demo.say(f"Parameters: {job.parameter_count:,}")
    tr = job.training
    demo.say(f"Training plan: {job.max_steps} steps, batch {tr.get('batch_size', '?')}, learning rate "
             f"{tr.get('learning_rate', '?')}, job {job.job_id}")


def train(demo: Demo) -> None:
    demo.step(5, "Training")
    job = demo.findings.job
    assert job is not None
    opts = demo.options
    cap = None if opts.fast else TIME_CAP_FACTOR * (opts.minutes or DEFAULT_TRAINING_MINUTES)
    if opts.steps is not None and opts.minutes is None:
        cap = None  # an explicit schedule runs to its end
    demo.say("Loss is cross-entropy in nats per character (ln of the vocabulary size at the start: pure guessing)."
             + (f" Time cap: {cap:g} min." if cap else ""))
    progress = JobProgress(out=demo.out, sample_width=100)
    started = time.monotonic()
    cancelled = False
    try:
        for event in demo.client.trainer.watch_job(job.job_id):
            demo.findings.events.append(event)
            progress.handle(event)
            if cap and not cancelled and time.monotonic() - started > cap * 60:
                cancelled = True
                progress.close()
                demo.say(f"Time cap of {cap:g} min reached: stopping; the best checkpoint so far is kept.")
                demo.client.trainer.cancel_job(job.job_id)
    finally:
        progress.close()
    demo.findings.training_seconds = time.monotonic() - started
    demo.findings.stopped_early = cancelled
    demo.findings.job = final = demo.client.trainer.get_job(job.job_id)
    if final.state == "FAILED":
        raise DemoFailed(f"training failed: {final.error}")
    demo.say(f"Done in {demo.findings.training_seconds:.0f} s: {final.state.lower()} at step {final.step}, "
             f"best validation loss {final.best_val_loss:.4f}.")
