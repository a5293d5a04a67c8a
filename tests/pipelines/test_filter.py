"""filter: by predicate and by event class."""

from __future__ import annotations

from pipelines import Pipeline, sinks, sources, testing
from tests.helpers import Purchase, View

EVENTS = [
    View(user="a"),
    Purchase(user="a", amount=5),
    View(user="bot"),
    Purchase(user="b", amount=500),
]


def test_filter_by_predicate_and_by_class() -> None:
    s = Pipeline("f").read(sources.memory(EVENTS, schema=View | Purchase))
    humans = testing.outputs(s.filter(lambda e: e.user != "bot"))
    assert len(humans) == 3
    purchases = s.filter(Purchase)
    result = purchases.write(sinks.memory("out")).run()
    assert [e.amount for e in result["out"]] == [5, 500]
    assert result.counts["filter_Purchase"].filtered == 2 and result.reconciles
