"""filter: by predicate and by event class."""

from __future__ import annotations

from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

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


class BigPurchase(Purchase):
    pass


class Refund(Purchase):
    pass


def test_a_class_filter_keeps_subclasses_in_order_at_any_batch_size() -> None:
    import random

    rng = random.Random(3)
    kinds = [View, Purchase, BigPurchase, Refund]
    events = [
        View(user=f"u{i}") if k is View else k(user=f"u{i}", amount=i)
        for i, k in enumerate(kinds[rng.randrange(4)] for _ in range(2000))
    ]
    for batch in (1, 7, 128, 1000):
        s = Pipeline("f").read(sources.memory(events, batch_size=batch))
        for cls in (Purchase, BigPurchase, View):
            kept = testing.outputs(s.filter(cls))
            assert kept == [e for e in events if isinstance(e, cls)], (batch, cls)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-50, 50), max_size=400),
    batch=st.sampled_from([1, 3, 128, 1000]),
    policy=st.sampled_from(["dead_letter", "skip"]),
)
def test_a_failing_predicate_loses_only_its_record_and_keeps_the_order(
    values: list[int], batch: int, policy: Literal["dead_letter", "skip"]
) -> None:
    def even(x: int) -> bool:
        if x % 7 == 0:
            raise ValueError(f"no sevens: {x}")
        return x % 2 == 0

    s = Pipeline("f").read(sources.memory(values, batch_size=batch))
    result = s.filter(even, on_error=policy).write(sinks.memory("out")).run()
    assert result["out"] == [x for x in values if x % 7 and x % 2 == 0]
    failing = [x for x in values if x % 7 == 0]
    if policy == "dead_letter":
        assert [d.payload for d in result.dead_letters] == [str(x) for x in failing]
    else:
        assert result.skipped == len(failing) and not result.dead_letters
    assert result.reconciles
