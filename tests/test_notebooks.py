"""The notebooks under notebooks/ run top to bottom, and are kept with their outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_are_there() -> None:
    assert [n.name for n in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_windows_and_aggregates.ipynb",
        "03_dispatch_and_dead_letters.ipynb",
        "04_scaling_out.ipynb",
        "05_joins_and_timers.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    stored = nbformat.read(path, as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    # kept executed with outputs, so that it reads well on a code host; no errors
    assert code and all(c.execution_count for c in code), "run notebooks/build.py"
    assert sum(bool(c.outputs) for c in code) >= len(code) / 2
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    fresh = copy.deepcopy(stored)
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    # raises CellExecutionError (with the cell and traceback) on the first failing cell
    NotebookClient(
        fresh, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    ran = [c for c in fresh.cells if c.cell_type == "code"]
    assert [bool(c.outputs) for c in ran] == [bool(c.outputs) for c in code]
    shown = {m for c in ran for o in c.outputs for m in o.get("data", {})}
    assert "text/html" in shown
    if "matplotlib" in "".join(c.source for c in ran):
        assert "image/png" in shown  # the plot was drawn
