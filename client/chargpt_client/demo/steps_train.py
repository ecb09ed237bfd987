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


def _training_fields(demo: Demo, corpus: t.Corpus) -> dict[str, Any]:
    opts = demo.options
    steps = opts.steps
    if opts.fast:
        steps = steps or FAST_STEPS
    fields: dict[str, Any] = {"seed": opts.seed, "sample_length": 200 if not opts.fast else 80}
    if steps is None:  # the trainer fits the schedule, evaluations and checkpoints to the budget itself
        minutes = opts.minutes or DEFAULT_TRAINING_MINUTES
        demo.say(f"Training budget: {minutes:g} min; the trainer times its first steps and fits the schedule to it.")
        fields.update(max_seconds=60 * minutes)
    if steps:
        evals, samples = (2, 3) if opts.fast else (EVALS_PER_RUN, SAMPLES_PER_RUN)
        # Rounded up, so the last regular evaluation is the final one rather than a step or two before it.
        fields.update(max_steps=steps, sample_interval=-(-steps // samples), eval_interval=-(-steps // evals))
        if opts.minutes:
            fields.update(max_seconds=60 * opts.minutes)  # whichever ends first
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
    length = f"{job.max_steps} steps" if job.max_steps is not None else f"{tr['max_seconds']:g} s"
    demo.say(f"Training plan: {length}, batch {tr.get('batch_size', '?')}, learning rate "
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
