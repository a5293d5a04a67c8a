"""The same pipeline on 1 and 2 workers gives the same multiset of outputs and counts."""

from __future__ import annotations

import pytest

from pipelines import Pipeline, sinks, sources
from tests.helpers import Purchase, View, multiset


def test_same_results_on_one_and_two_workers() -> None:
    events = [
        View(user=f"u{i % 7}") if i % 3 else Purchase(user=f"u{i % 5}", amount=i)
        for i in range(3000)
    ]
    routes = (
        Pipeline("w")
        .read(sources.memory(events, partitions=3, batch_size=100))
        .filter(lambda e: e.user != "u0")
        .forward(big=lambda e: getattr(e, "amount", 0) > 900, otherwise="rest")
    )
    p = routes.big.map(lambda e: e.amount).write(sinks.memory("big")) | routes.rest.write(
        sinks.memory("rest")
    )
    one, two = p.run(workers=1), p.run(workers=2)
    assert multiset(one["big"]) == multiset(two["big"]) and len(one["big"]) > 0
    assert multiset(one["rest"]) == multiset(two["rest"])
    assert {k: c for k, c in one.counts.items()} == {k: c for k, c in two.counts.items()}


def test_workers_must_be_a_positive_int() -> None:
    p = Pipeline("w").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"workers must be a positive int; got 0\. Hint:"):
        p.run(workers=0)
