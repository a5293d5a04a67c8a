"""map, flat_map and inspect."""

from __future__ import annotations

from typing import Any

from pipelines import Pipeline, sinks, sources, testing
from tests.helpers import Purchase, View

EVENTS = [
    View(user="a"),
    Purchase(user="a", amount=5),
    View(user="bot"),
    Purchase(user="b", amount=500),
]


def test_map_changes_type_and_counts() -> None:
    s = Pipeline("m").read(sources.memory(EVENTS)).map(lambda e: e.user)
    result = s.write(sinks.memory("users")).run()
    assert sorted(result["users"]) == ["a", "a", "b", "bot"]
    assert result.counts["map"].received == 4 and result.counts["map"].out == 4


def test_flat_map_counts_created_and_empty_as_filtered() -> None:
    s = Pipeline("fm").read(sources.memory([0, 1, 2, 3])).flat_map(lambda n: [n] * n)
    result = s.write(sinks.memory("out")).run()
    assert sorted(result["out"]) == [1, 2, 2, 3, 3, 3]
    counts = result.counts["flat_map"]
    assert (counts.received, counts.out, counts.filtered, counts.created) == (4, 6, 1, 3)
    assert result.read + result.created == result.written + result.filtered
    assert result.reconciles


def test_inspect_sees_each_record_and_passes_it_on() -> None:
    seen: list[Any] = []
    out = testing.outputs(Pipeline("i").read(sources.memory([1, 2, 3])).inspect(seen.append))
    assert sorted(seen) == [1, 2, 3] and sorted(out) == [1, 2, 3]
