"""An explorable attention view as self-contained HTML/JS (no libraries, no network) for Jupyter's `_repr_html_`.

Pick a layer and a head (or the mean of a layer's heads); hover a character to see how much it attends to each
earlier one (the characters light up by weight) and the heatmap cell under the pointer gives the exact weight.
bertviz was considered: it needs torch tensors (and transformers), which the client must not depend on.
"""

from __future__ import annotations

import html
import json
import uuid

from chargpt_client import types as t

VIEW_MAX_CHARS = 96  # the HTML carries every weight: keep it to a few hundred kilobytes
CELL_PX = 7

_TEMPLATE = """<div id="{id}" class="chargpt-attention" style="font-family: sans-serif; font-size: 13px">
<div style="margin-bottom: 6px"><b>{title}</b></div>
<div style="margin-bottom: 6px">layer <select class="layer"></select> head <select class="head"></select>
<span class="readout" style="margin-left: 12px; color: #555">hover a character</span></div>
<div class="chars" style="font-family: monospace; font-size: 16px; line-height: 1.9; white-space: pre-wrap;
word-break: break-all; max-width: 60em"></div>
<canvas class="grid" style="margin-top: 8px; image-rendering: pixelated"></canvas>
<script type="application/json" class="data">{data}</script>
<script>
(function() {{
  const root = document.getElementById("{id}");
  const d = JSON.parse(root.querySelector(".data").textContent);
  const T = d.tokens.length, cell = {cell};
  const layerSel = root.querySelector(".layer"), headSel = root.querySelector(".head");
  const readout = root.querySelector(".readout"), chars = root.querySelector(".chars");
  const canvas = root.querySelector(".grid"), ctx = canvas.getContext("2d");
  canvas.width = canvas.height = T * cell;
  d.layers.forEach((l, i) => layerSel.add(new Option(String(l), i)));
  d.heads.forEach((h, i) => headSel.add(new Option(String(h), i)));
  headSel.add(new Option("mean", -1));
  const shown = s => ({{"\\n": "\\u23ce\\n", " ": "\\u2423", "\\t": "\\u21e5"}})[s] || s;
  function matrix() {{
    const heads = d.weights[+layerSel.value], h = +headSel.value;
    if (h >= 0) return heads[h];
    return heads[0].map((row, q) => row.map((_, k) => heads.reduce((s, m) => s + m[q][k], 0) / heads.length));
  }}
  const spans = d.tokens.map((tok, i) => {{
    const s = document.createElement("span");
    s.textContent = shown(tok);
    s.style.padding = "1px 1px";
    s.style.borderRadius = "2px";
    s.addEventListener("mouseenter", () => focus(i));
    chars.appendChild(s);
    return s;
  }});
  function focus(q) {{
    const m = matrix();
    spans.forEach((s, k) => {{
      const w = k <= q ? m[q][k] : 0;
      s.style.background = k === q ? "#ffd54f" : "rgba(30, 100, 220, " + Math.min(1, w * 1.5).toFixed(3) + ")";
      s.style.color = w > 0.45 && k !== q ? "white" : "";
      s.title = k <= q ? "weight " + w.toFixed(3) : "";
    }});
    readout.textContent = "character " + q + " " + JSON.stringify(d.tokens[q]) + " attends to the highlighted ones";
  }}
  function draw() {{
    const m = matrix();
    for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {{
      const v = k <= q ? m[q][k] : 0, c = Math.round(255 * (1 - v));
      ctx.fillStyle = "rgb(" + c + "," + c + ",255)";
      ctx.fillRect(k * cell, q * cell, cell, cell);
    }}
  }}
  canvas.addEventListener("mousemove", e => {{
    const r = canvas.getBoundingClientRect();
    const q = Math.floor((e.clientY - r.top) / cell), k = Math.floor((e.clientX - r.left) / cell);
    if (q < 0 || k < 0 || q >= T || k >= T) return;
    focus(q);
    readout.textContent = JSON.stringify(d.tokens[q]) + " (" + q + ") -> " + JSON.stringify(d.tokens[k]) +
      " (" + k + "): " + (k <= q ? matrix()[q][k].toFixed(3) : "masked (future)");
  }});
  layerSel.onchange = headSel.onchange = draw;
  draw();
}})();
</script></div>"""


def attention_html(attention: t.Attention, title: str = "", max_chars: int = VIEW_MAX_CHARS) -> str:
    """The view for at most max_chars characters (the first ones: causal attention makes that exact)."""
    size = min(attention.shape[2], max_chars)
    weights = [[[[round(w, 3) for w in row[:size]] for row in attention.matrix(li, hi)[:size]]
                for hi in range(attention.shape[1])] for li in range(attention.shape[0])]
    data = {"tokens": attention.tokens[:size], "layers": attention.layers, "heads": attention.heads,
            "weights": weights}
    # JSON in a <script> element: "<" (as in "</script>" or "<!--") could change how HTML parses it; escape it.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    heading = title or f"attention over {''.join(attention.tokens[:size])!r}"
    return _TEMPLATE.format(id=f"chargpt-att-{uuid.uuid4().hex[:12]}", title=html.escape(heading), data=payload,
                            cell=CELL_PX)
