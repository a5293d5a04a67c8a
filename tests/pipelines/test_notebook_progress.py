"""In a Jupyter kernel, `run()` shows its counts while it runs and leaves the final ones."""

from __future__ import annotations

import re

import nbformat
from nbclient import NotebookClient

CELL = """
from pipelines import Pipeline, sources, sinks
result = (
    Pipeline("nb")
    .read(sources.generate(lambda rng, i: i, count=20000, rate=10000))
    .filter(lambda n: n % 2 == 0)
    .write(sinks.memory("even"))
).run()
len(result["even"])
"""


def test_progress_shows_in_a_notebook() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    shown = [o for o in outputs if o.output_type == "display_data"]
    assert len(shown) == 1, outputs
    html = shown[0].data["text/html"]
    # the display was updated in place to the final counts
    assert html.startswith('<div class="evflow-progress">') and "finished for" in html
    row = r"<tr><td>filter\w*</td><td>filter</td><td>20000</td><td>10000</td><td>10000</td>"
    assert re.search(row, html), html
    assert outputs[-1].data["text/plain"] == "10000"
