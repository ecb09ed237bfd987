"""Notebook helpers without a server: the next-character filters against the sampler's own, reprs, figures."""

from __future__ import annotations

import html
import json
import math
import re
import struct

import pytest
from chargpt_client import notebook as nb
from chargpt_client import types as t
from chargpt_client.next_char import apply_sampling, next_char_steps

VOCAB = "abcdefghij"
LOGITS = [2.0, 1.5, 1.5, 0.3, -0.2, -1.0, 0.9, -3.0, 0.0, 1.1]  # a tie at ranks 2-3 exercises "ties kept"


def _reference(temperature: float, top_k: int, top_p: float) -> dict[str, float]:
    """The sampler's own distribution over the whole vocabulary (chargpt.core.sampling, torch)."""
    torch = pytest.importorskip("torch")
    from chargpt.core.sampling import filter_logits
    from chargpt.sampling_params import SamplingParams

    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(filter_logits(torch.tensor(LOGITS), params), dim=-1).tolist()
    return dict(zip(VOCAB, probs, strict=True))


def _logprobs() -> list[tuple[str, float]]:
    log_z = math.log(sum(math.exp(x) for x in LOGITS))
    return sorted(((ch, x - log_z) for ch, x in zip(VOCAB, LOGITS, strict=True)), key=lambda c: -c[1])


@pytest.mark.parametrize(("temperature", "top_k", "top_p"),
                         [(1.0, 0, 1.0), (0.3, 5, 1.0), (0.8, 2, 1.0), (1.2, 200, 1.0), (0.7, 0, 0.6),
                          (1.5, 4, 0.8)])
def test_filters_over_every_character_match_the_sampler(temperature: float, top_k: int, top_p: float) -> None:
    after = dict(apply_sampling(_logprobs(), temperature, top_k, top_p))
    assert math.isclose(sum(after.values()), 1.0, abs_tol=1e-9)
    reference = _reference(temperature, top_k, top_p)
    for ch in VOCAB:
        assert after[ch] == pytest.approx(reference[ch], abs=1e-6), ch


def test_over_the_returned_top_n_it_is_exact_when_top_k_fits_and_renormalised_otherwise() -> None:
    top4 = _logprobs()[:4]  # what logprobs=4 returns
    exact = dict(apply_sampling(top4, 0.5, 3))
    reference = _reference(0.5, 3, 1.0)
    assert {ch for ch, p in exact.items() if p > 0} == {ch for ch, p in reference.items() if p > 0}
    for ch, p in exact.items():
        assert p == pytest.approx(reference[ch], abs=1e-6)
    loose = dict(apply_sampling(top4, 1.0, 0))  # no top-k: the full sampler would give mass outside the top-4
    full = _reference(1.0, 0, 1.0)
    mass = sum(full[ch] for ch in loose)
    assert math.isclose(sum(loose.values()), 1.0, abs_tol=1e-9)
    for ch, p in loose.items():
        assert p == pytest.approx(full[ch] / mass, abs=1e-6)


def test_temperature_zero_is_greedy_and_empty_stays_empty() -> None:
    after = apply_sampling(_logprobs(), 0.0, 5)
    assert after[0] == ("a", 1.0) and all(p == 0.0 for _, p in after[1:])
    assert apply_sampling([], 1.0) == []


def _summary(temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0) -> t.GenerationSummary:
    return t.GenerationSummary("LENGTH", 1, 2, 7, False, 0, 0.0, 0.0, 0.0, "", temperature, top_k, top_p)


def _generation() -> t.GenerationResult:
    lp = [("a", math.log(0.5)), ("b", math.log(0.3)), ("c", math.log(0.1))]
    tokens = [t.TokenLogprob("b", math.log(0.3), lp), t.TokenLogprob("z", math.log(0.02), lp)]  # z: not in the top
    return t.GenerationResult("bz", _summary(), tokens)


def test_next_char_steps_follow_the_generation() -> None:
    steps = next_char_steps(_generation(), "Q:")
    assert [(s.context, s.chosen) for s in steps] == [("Q:", "b"), ("Q:b", "z")]
    assert steps[0].raw_mass == pytest.approx(0.9)
    assert [ch for ch, _ in steps[1].raw] == ["a", "b", "c", "z"]  # the sampled character is always shown
    for step in steps:
        assert sum(p for _, p in step.filtered) == pytest.approx(1.0)
    focused = next_char_steps(_generation(), temperature=0.3, top_k=1)
    assert focused[0].filtered[0] == ("a", 1.0)
    with pytest.raises(ValueError, match="logprobs=N"):
        next_char_steps(t.GenerationResult("x", _summary()))


def _attention(tokens: str, n_layers: int = 1, n_heads: int = 2) -> t.Attention:
    size = len(tokens)
    values: list[float] = []
    for _ in range(n_layers * n_heads):
        for q in range(size):
            values += [1.0 / (q + 1) if k <= q else 0.0 for k in range(size)]
    return t.Attention(tokens=list(tokens), layers=list(range(n_layers)), heads=list(range(n_heads)),
                       shape=(n_layers, n_heads, size, size), dtype="float32",
                       data=struct.pack(f"<{len(values)}f", *values))


def test_attention_html_carries_the_weights_and_escapes_markup() -> None:
    att = _attention("</script>\n<b>")
    page = att._repr_html_()
    assert '<select class="layer">' in page and '<select class="head">' in page and "<canvas" in page
    payload = re.search(r'<script type="application/json" class="data">(.*?)</script>', page, re.S)
    assert payload is not None and "<" not in payload.group(1)  # no markup can break out of the script element
    data = json.loads(payload.group(1))
    assert data["tokens"] == list("</script>\n<b>") and data["heads"] == [0, 1]
    assert data["weights"][0][1][3][:5] == [0.25, 0.25, 0.25, 0.25, 0.0]
    assert html.escape("'</script>\\n<b>'") in page  # the title, escaped
    ids = re.findall(r'id="(chargpt-att-[0-9a-f]+)"', page + nb.AttentionView(att)._repr_html_())
    assert len(set(ids)) == 2  # two views in one notebook do not share an element id


def test_tables_render_html_and_text() -> None:
    score = t.ScoreResult(mean_nll=1.5, bits_per_char=2.164, perplexity=4.48, num_tokens=500, token_logprobs=[])
    table = nb.score_table({"shakespeare <in>": score}, caption="trained on shakespeare")
    page = table._repr_html_()
    assert "<caption>trained on shakespeare</caption>" in page
    assert "<th>perplexity</th>" in page and "<td>shakespeare &lt;in&gt;</td>" in page and "<td>4.48</td>" in page
    assert str(table).splitlines()[1].split() == ["text", "characters", "mean", "loss", "(nats)", "perplexity",
                                                   "bits/char"]


def _events() -> list[t.JobEvent]:
    base = {"time": None, "job_id": "j"}
    events: list[t.JobEvent] = [t.Progress(sequence=i, step=i, max_steps=4, loss=4.0 - i / 2, learning_rate=1e-3,
                                           tokens_per_second=1.0, elapsed_seconds=i, eta_seconds=1, **base)
                                for i in range(1, 5)]
    events.append(t.Evaluation(sequence=9, step=4, train_loss=2.0, val_loss=2.25, is_best=True, **base))
    return events


def test_loss_history_shows_the_curves_and_the_evaluations() -> None:
    pytest.importorskip("matplotlib")
    page = nb.LossHistory(_events(), title="job j")._repr_html_()
    assert page.count('<img src="data:image/png;base64,') == 1
    assert "<th>validation loss</th>" in page and "<td>2.25</td>" in page and "<td>yes</td>" in page


def test_next_char_view_is_a_png_and_a_table() -> None:
    pytest.importorskip("matplotlib")
    view = nb.next_char_view(_generation(), "Q:")
    assert view._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = view.table().rows
    assert rows[1][0] == "'z'" and rows[0][1] == "90%"


def test_attention_grid_labels_stay_readable() -> None:
    pytest.importorskip("matplotlib")
    from chargpt_client import plots

    text = "JULIET:\nO Romeo, Romeo! wherefore art thou"  # the demo's 42 characters
    for n_layers, n_heads, panels in ((4, 4, 4), (2, 2, 4), (1, 1, 1)):
        fig = plots.attention_figure(_attention(text, n_layers, n_heads))
        axes = fig.get_axes()
        assert len(axes) == panels
        width_in = fig.get_size_inches()[0]
        for ax in axes:
            labels = ax.get_xticklabels()
            assert len(labels) == plots.GRID_MAX_CHARS
            assert all(label.get_fontsize() >= 8 for label in labels)
            per_char_points = ax.get_position().width * width_in * 72 / len(labels)
            assert per_char_points >= 8  # a character's column is at least as wide as its label's font size
    assert "first 40 of 42 characters" in fig.texts[0].get_text()


_DOM_STUB = """
function el() { return {style: {}, children: [], listeners: {}, options: [], value: "0", textContent: "",
  appendChild(c) { this.children.push(c); }, add(o) { this.options.push(o); },
  addEventListener(e, f) { this.listeners[e] = f; }, getBoundingClientRect() { return {top: 0, left: 0}; },
  getContext() { return {fillRect() {}}; }}; }
const parts = {".layer": el(), ".head": el(), ".readout": el(), ".chars": el(), ".grid": el(),
  ".data": Object.assign(el(), {textContent: DATA})};
global.Option = function(text, value) { this.text = text; this.value = value; };
global.document = {getElementById() { return {querySelector: s => parts[s]}; }, createElement: el};
"""
_DOM_DRIVE = """
const chars = parts[".chars"].children, out = [];
chars[3].listeners.mouseenter();  // hover "c": it and the earlier characters light up
out.push(parts[".readout"].textContent, chars.map(s => s.style.background).join("|"));
parts[".head"].value = "-1"; parts[".layer"].value = "1"; parts[".layer"].onchange();  // mean of layer 1's heads
parts[".grid"].listeners.mousemove({clientX: 1.5 * CELL, clientY: 3.5 * CELL});  // the cell (query 3, key 1)
out.push(parts[".readout"].textContent, String(parts[".head"].options.length));
console.log(JSON.stringify(out));
"""


def test_the_attention_view_script_runs() -> None:
    """The view's own script under node with a minimal DOM: hovering and the selectors do what they say."""
    import shutil
    import subprocess

    from chargpt_client.attention_view import CELL_PX

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    page = _attention("ab\nc ", n_layers=2)._repr_html_()
    data = re.search(r'class="data">(.*?)</script>', page, re.S)
    script = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert data is not None and len(script) == 1
    program = (_DOM_STUB.replace("DATA", json.dumps(data.group(1))) + script[0]
               + _DOM_DRIVE.replace("CELL", str(CELL_PX)))
    result = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    hover, backgrounds, cell, options = json.loads(result.stdout)
    assert hover == 'character 3 "c" attends to the highlighted ones'
    assert backgrounds.split("|") == ["rgba(30, 100, 220, 0.375)"] * 3 + ["#ffd54f", "rgba(30, 100, 220, 0.000)"]
    assert cell == '"c" (3) -> "b" (1): 0.250' and options == "3"  # heads 0, 1 and "mean"
