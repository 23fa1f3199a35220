"""The notebooks run top to bottom on a real kernel and show what they promise."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# name -> (minimum number of plots, texts some output must contain)
EXPECTED = {
    "01-explore.ipynb": (2, ["robust_z during", "drift during", "memory_leak", "batch_job"]),
    "02-train-and-evaluate.ipynb": (2, ["online only", "online + model", "false drains"]),
}


def output_texts(cell: nbformat.NotebookNode) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            texts.append(output["text"])
        for mime in ("text/plain", "text/html"):
            if mime in output.get("data", {}):
                texts.append(output["data"][mime])
    return texts


def test_every_notebook_is_checked() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_shows_its_results(name: str, tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # Committed notebooks carry no outputs: what is checked here is what this run produced.
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    plots = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    min_plots, texts = EXPECTED[name]
    assert plots >= min_plots
    shown = "\n".join(t for c in code for t in output_texts(c))
    for text in texts:
        assert text in shown, f"{name} shows no {text!r}"
