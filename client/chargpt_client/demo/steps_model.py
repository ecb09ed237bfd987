"""Demo steps 6-8: writing with the trained model, the generalization test, and attention heatmaps."""

from __future__ import annotations

import math

from chargpt.sampling_params import PRESET_VALUES
from chargpt_client import plots
from chargpt_client import types as t
from chargpt_client.demo.context import BUILTIN_CORPORA, Demo
from chargpt_client.errors import NotFound
from chargpt_client.next_char import next_char_steps
from chargpt_client.render import print_table
from chargpt_client.tokenizer import CharMapping

PRESET_SETTINGS = {preset.value: f"temperature {values['temperature']}, top-k {values['top_k']}"
                   for preset, values in PRESET_VALUES.items()}
MIN_SCORED_CHARS = 50
NEXT_CHAR_STEPS, NEXT_CHAR_TOP_N = 8, 20  # 20: the most the service returns, nearly all of a small vocabulary
PREVIOUS_TOKEN_HEAD = 0.3  # mean attention on the previous character that is worth pointing out


def write(demo: Demo) -> None:
    demo.step(6, "Writing")
    job = demo.findings.job
    assert job is not None
    inference = demo.client.inference
    result = inference.load_model(f"demo-{job.job_id[:12]}", job_id=job.job_id)  # best, else latest
    model = demo.findings.model = result.model
    which = "the latest checkpoint (no evaluation yet)" if math.isnan(model.training.val_loss) else \
        f"the best checkpoint (validation loss {model.training.val_loss:.4f})"
    demo.say(f"Loaded {which}, from step {model.training.step}, into the inference service as '{model.name}' "
             f"on {model.device}.")
    length = demo.options.sample_chars
    for preset in PRESET_SETTINGS:
        generated = inference.generate(model.name, "\n", preset=preset, max_new_tokens=length,
                                       seed=demo.options.seed)
        demo.findings.generations[preset] = generated
        demo.say("")
        s = generated.summary
        demo.say(f"--- {preset} ({PRESET_SETTINGS[preset]}), seed {s.seed}: {s.generated_tokens} characters in "
                 f"{s.total_seconds:.1f} s ---")
        demo.block(generated.text)
    prompt = demo.options.prompt if demo.options.prompt is not None else demo.profile.prompt
    known, dropped = CharMapping(model.vocabulary).filter(prompt)
    if dropped:
        demo.say(f"(dropped characters the model never saw from your prompt: {''.join(dropped)!r})")
    demo.findings.prompt = known
    demo.say("")
    demo.say(f"--- your prompt {known!r}, balanced, streamed as it is generated ---")
    demo.out.write("    | " + known.replace("\n", "\n    | "))
    stream = inference.generate_stream(model.name, known, preset="balanced", max_new_tokens=length,
                                       seed=demo.options.seed)
    for chunk in stream:
        demo.out.write(chunk.replace("\n", "\n    | "))
        demo.out.flush()
    demo.say("")
    demo.findings.continuation = stream.result()
    _next_char(demo, model.name, known)


def _next_char(demo: Demo, model: str, prompt: str) -> None:
    """The next-character choice made visible: a few balanced steps, raw candidates vs. after the filters."""
    result = demo.client.inference.generate(model, prompt, preset="balanced", max_new_tokens=NEXT_CHAR_STEPS,
                                            logprobs=NEXT_CHAR_TOP_N, seed=demo.options.seed)
    steps = demo.findings.next_char = next_char_steps(result, prompt)
    s = result.summary
    demo.say("")
    demo.wrap(f"How each character is picked: the model's top-{NEXT_CHAR_TOP_N} candidates (raw probabilities) and "
              f"the same candidates after temperature {s.temperature:g}, top-k {s.top_k} and top-p {s.top_p:g} "
              "(renormalised over those candidates):")
    for step in steps[:6]:
        raw = " ".join(f"{plots.visible(ch)} {p:.2f}" for ch, p in step.raw[:4])
        after = " ".join(f"{plots.visible(ch)} {p:.2f}" for ch, p in step.filtered[:4])
        demo.say(f"  sampled {plots.visible(step.chosen)!r:5}  raw: {raw:32}  after: {after}")
    report_dir = demo.options.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "next_char.png"
    plots.next_char_plot(steps, path, title=f"the next-character choice after {prompt!r} (balanced preset)")
    demo.findings.images["next_char"] = path
    demo.say(f"Wrote {path}.")


def _heldout_texts(demo: Demo) -> dict[str, str]:
    """The validation-split tail of each corpus, read through the trainer: the trained one first (in domain)."""
    size = demo.options.heldout_chars
    trained = demo.findings.corpus
    assert trained is not None
    sources = {demo.options.corpus_label: trained.corpus_id}
    sources.update({name: name for name in BUILTIN_CORPORA if name not in sources})
    texts: dict[str, str] = {}
    for label, corpus_id in sources.items():
        try:
            corpus = trained if corpus_id == trained.corpus_id else demo.client.trainer.get_corpus(corpus_id)
        except NotFound:  # a built-in whose source package the trainer lacks
            demo.findings.filter_notes.append(f"{label}: not available on this trainer; not scored")
            continue
        tail = min(size, corpus.val_chars)
        texts[label] = demo.client.trainer.read_corpus(corpus.corpus_id, "validation", -tail, tail).text
    return texts


def generalize(demo: Demo) -> None:
    demo.step(7, "Generalization: perplexity in and out of domain")
    model = demo.findings.model
    assert model is not None
    mapping = CharMapping(model.vocabulary)
    demo.wrap(f"Perplexity = exp(mean loss) on the last {demo.options.heldout_chars:,} characters of each corpus's "
              "validation split (text no model of it trained on), read from the trainer. Lower is better; 1 is a "
              f"perfect guess, {mapping.vocab_size} is uniform guessing over the vocabulary. Characters the model "
              "never saw cannot be scored, so they are removed first; the table says how many.")
    for i, (name, raw) in enumerate(_heldout_texts(demo).items()):
        text, dropped = mapping.filter(raw)
        n_dropped = sum(dropped.values())
        if n_dropped:
            shown = "".join(sorted(dropped, key=dropped.__getitem__, reverse=True)[:15])
            demo.findings.filter_notes.append(f"{name}: removed {n_dropped} characters "
                                              f"({n_dropped / len(raw):.1%}) outside the vocabulary, e.g. {shown!r}")
        if len(text) < MIN_SCORED_CHARS:
            demo.findings.filter_notes.append(f"{name}: too little text left after filtering; not scored")
            continue
        score = demo.client.inference.score(model.name, text)
        demo.findings.perplexity.append({
            "corpus": name, "domain": "in" if i == 0 else "out", "chars": len(text), "removed": n_dropped,
            "perplexity": score.perplexity, "bits_per_char": score.bits_per_char})
    rows = [[r["corpus"], r["domain"], r["chars"], r["removed"], r["perplexity"], r["bits_per_char"]]
            for r in demo.findings.perplexity]
    print_table(["held-out text", "domain", "scored chars", "removed", "perplexity", "bits/char"], rows, demo.out)
    for note in demo.findings.filter_notes:
        demo.say(f"  note: {note}")


def look_inside(demo: Demo) -> None:
    demo.step(8, "Attention heatmaps")
    model = demo.findings.model
    assert model is not None
    report_dir = demo.options.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    text, _ = CharMapping(model.vocabulary).filter(demo.profile.attention_text)
    text = text[:min(model.config.block_size, 48)]
    attention = demo.client.inference.attention(model.name, text)
    path = report_dir / "attention.png"
    plots.attention_grid(attention, path, title=f"attention over {text!r}")
    demo.findings.images["attention"] = path
    demo.say(f"Wrote {path}: {len(attention.layers)} layers x {len(attention.heads)} heads over {len(text)} "
             "characters (row = the character predicting the next one, column = the earlier character it looks at).")
    strongest = _strongest_previous(attention)
    if strongest:
        demo.say(strongest)
    curves = report_dir / "loss.png"
    plots.loss_curves(demo.findings.events, curves, title=f"training on {demo.options.corpus_label}")
    demo.findings.images["loss"] = curves
    demo.say(f"Wrote {curves}: the training and validation loss curves.")


def _strongest_previous(attention: t.Attention) -> str:
    """A one-line observation: which head attends most to the immediately preceding character."""
    size = attention.shape[2]
    if size < 3:
        return ""
    best = (0.0, 0, 0)
    for li in range(attention.shape[0]):
        for hi in range(attention.shape[1]):
            m = attention.matrix(li, hi)
            prev = sum(m[i][i - 1] for i in range(1, size)) / (size - 1)
            best = max(best, (prev, li, hi))
    weight, li, hi = best
    if weight < PREVIOUS_TOKEN_HEAD:
        return ""
    return (f"Layer {attention.layers[li]} head {attention.heads[hi]} puts {weight:.0%} of its attention on the "
            "previous character on average (a 'previous-token' head).")
