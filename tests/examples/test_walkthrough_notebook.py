"""examples/chargpt_walkthrough.ipynb: committed without outputs, and runs headless end to end in its fast mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "chargpt_walkthrough.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        source = "".join(cell["source"])[:60]
        assert cell["outputs"] == [], f"outputs committed in the cell starting {source!r}"
        assert cell["execution_count"] is None, f"execution count committed in the cell starting {source!r}"
    assert "widgets" not in notebook["metadata"], "widget state committed"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_notebook_runs_headless_in_fast_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CHARGPT_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("CHARGPT_NOTEBOOK_DATA", str(tmp_path / "data"))
    for name in ("CHARGPT_TRAINER_ADDRESS", "CHARGPT_INFERENCE_ADDRESS"):
        monkeypatch.delenv(name, raising=False)  # the notebook starts its own services
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Any cell that raises fails the run (CellExecutionError names the cell and the traceback).
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for expected in ("vocabulary size: ", "--- focused", "--- creative", "succeeded at step 30"):
        assert expected in texts, expected
    assert "same as chargpt's greedy text: True" in texts  # the Hugging Face export, written by transformers
    rich = [o.data for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert sum("image/png" in data for data in rich) >= 4  # next-char views x3 and the heatmaps
    html = "".join(data.get("text/html", "") for data in rich)
    assert "chargpt-loss" in html and "<th>perplexity</th>" in html and "chargpt-attention" in html
