from __future__ import annotations

from rich.console import Console

from pipelines import Pipeline, sinks, sources
from pipelines._render import to_tree
from tests.helpers import Purchase, View


def render(obj: object) -> str:
    console = Console(width=200, record=True)
    console.print(obj)
    return console.export_text()


def test_tree_shows_every_step_route_and_dead_letter_sink() -> None:
    routes = (
        Pipeline("shop")
        .read(sources.memory([], schema=View | Purchase))
        .filter(Purchase, on_error="skip")
        .forward(big=lambda e: e.amount > 9, otherwise="rest")
    )
    p = (
        routes.big.write(sinks.memory("big")) | routes.rest.write(sinks.memory("rest"))
    ).dead_letters(sinks.memory("dead"))
    text = render(to_tree(p))
    for part in (
        "pipeline shop",
        "read_memory read memory as View | Purchase",
        "filter_Purchase filter Purchase [on_error=skip]",
        "route big",
        "route rest",
        "big_memory_big write memory_big",
        "dead letters -> memory_dead",
    ):
        assert part in text, part
    assert render(p) == text


def test_summary_table_shows_totals_and_reconciliation() -> None:
    result = (
        Pipeline("s")
        .read(sources.memory([1, 2, 3]))
        .filter(lambda x: x > 1)
        .write(sinks.memory("o"))
        .run()
    )
    text = render(result)
    assert "filter" in text and "total" in text
    assert "read 3 + created 0 = written 2 + filtered 1" in text and "reconciles" in text
    assert "RunResult('s', read=3, written=2, filtered=1" in repr(result)
