"""filter, map, flat_map, inspect, key_by and merge through the runner."""

from __future__ import annotations

from typing import Any

from pipelines import Pipeline, sinks, sources, testing
from tests.helpers import Purchase, View, multiset

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


def test_key_by_checks_keys_are_strings() -> None:
    s = Pipeline("k").read(sources.memory([{"u": "a"}, {"u": 7}, {}]))
    result = s.key_by(lambda d: d["u"]).write(sinks.memory("out")).run()
    assert result["out"] == [{"u": "a"}]
    kinds = sorted((d.error_type, d.message.split(":")[0]) for d in result.dead_letters)
    assert kinds == [("KeyError", "'u'"), ("TypeError", "step 'key_by' (key_by)")]
    bad = next(d for d in result.dead_letters if d.error_type == "TypeError")
    assert "must return str; got int 7. Hint: convert it" in bad.message
    assert all(d.kind == "key_error" for d in result.dead_letters)
    assert result.reconciles


def test_merge_interleaves_sources_and_keeps_counts() -> None:
    p = Pipeline("mg")
    a = p.read(sources.memory([1, 2, 3], name="a"))
    b = p.read(sources.memory([10, 20], name="b"))
    merged = a.merge(b.map(lambda x: x + 1)).filter(lambda x: x != 2)
    result = merged.write(sinks.memory("out")).run(workers=2)
    assert sorted(result["out"]) == [1, 3, 11, 21]
    assert result.read == 5 and result.counts["merge"].received == 5 and result.reconciles


def test_one_stream_written_twice_counts_the_copy() -> None:
    s = Pipeline("t").read(sources.memory([1, 2]))
    result = (s.write(sinks.memory("a")) | s.write(sinks.memory("b"))).run()
    assert sorted(result["a"]) == sorted(result["b"]) == [1, 2]
    assert result.created == 2 and result.written == 4 and result.reconciles


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
