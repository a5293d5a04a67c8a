"""map, flat_map and inspect."""

from __future__ import annotations

from typing import Any

import pytest

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


def test_the_counts_of_a_step_the_run_has_not_say_the_steps_it_has() -> None:
    result = Pipeline("m").read(sources.memory([1])).map(lambda n: n).write(sinks.memory("o")).run()
    with pytest.raises(KeyError, match=r"no step 'mapp'; its steps: .*did you mean 'map'"):
        result.counts["mapp"]
    assert result.counts["map"].out == 1


def test_flat_map_counts_created_and_empty_as_filtered() -> None:
    s = Pipeline("fm").read(sources.memory([0, 1, 2, 3])).flat_map(lambda n: [n] * n)
    result = s.write(sinks.memory("out")).run()
    assert sorted(result["out"]) == [1, 2, 2, 3, 3, 3]
    counts = result.counts["flat_map"]
    assert (counts.received, counts.out, counts.filtered, counts.created) == (4, 6, 1, 3)
    assert result.read + result.created == result.written + result.filtered
    assert result.reconciles


def test_a_flat_map_that_returns_one_value_is_told_not_split_into_records() -> None:
    # flat_map(lambda e: e.text) handed on each character as a record (a dict its keys,
    # bytes their numbers), and the run reconciled.
    returned: dict[str, Any] = {
        "characters": "hello",
        "keys": {"user": "ada", "amount": 3},
        "numbers (one per byte)": b"xy",
    }
    for parts, value in returned.items():
        s = Pipeline("fm").read(sources.memory(["r1", "r2"])).flat_map(lambda r, v=value: v)
        result = s.write(sinks.memory("out")).run()
        assert result["out"] == [] and result.reconciles
        assert [d.error_type for d in result.dead_letters] == ["TypeError", "TypeError"]
        assert f"would be handed on as its {parts}, one record each. Hint: return a list" in (
            result.dead_letters[0].message
        )
    none = Pipeline("fm").read(sources.memory([1])).flat_map(lambda r: None)
    [letter] = none.write(sinks.memory("out")).run().dead_letters
    assert "returned None, not the records to hand on. Hint: return a list" in letter.message
    # what flat_map is for goes on as it did: lists, tuples, generators, a dict's items
    fine = (
        Pipeline("fm")
        .read(sources.memory([{"a": 1}]))
        .flat_map(lambda d: [*d.items(), (2, 3), *(x for x in [d])])
    )
    assert fine.write(sinks.memory("out")).run()["out"] == [("a", 1), (2, 3), {"a": 1}]


def test_inspect_sees_each_record_and_passes_it_on() -> None:
    seen: list[Any] = []
    out = testing.outputs(Pipeline("i").read(sources.memory([1, 2, 3])).inspect(seen.append))
    assert sorted(seen) == [1, 2, 3] and sorted(out) == [1, 2, 3]


def test_a_map_function_that_never_returns_a_value_is_refused_when_added() -> None:
    # def enrich(e): e.seen = True (no return) made every record None, and a jsonl sink
    # wrote a file of nulls while the run reconciled.
    import pytest

    def enrich(record: dict[str, Any]) -> None:
        record["seen"] = True

    def enriched(record: dict[str, Any]) -> dict[str, Any] | None:
        if record:
            record["seen"] = True
            return record
        return None

    records = Pipeline("m").read(sources.memory([{"n": 1}]))
    with pytest.raises(
        TypeError,
        match=r"step 'map' \(map\): function <.*enrich line \d+> never returns a value .*"
        r"every record would become None\. Hint: return the record .*or use inspect",
    ):
        records.map(enrich)
    assert testing.outputs(records.map(enriched)) == [{"n": 1, "seen": True}]

    def either(record: dict[str, Any]) -> dict[str, Any] | None:
        return record if record else None  # one return, two values: taken

    assert testing.outputs(records.map(either)) == [{"n": 1}]  # each run reads its own copy
    assert testing.outputs(records.inspect(enrich)) == [{"n": 1, "seen": True}]

    # a predicate without its return dropped every record, or routed none
    def is_big(record: dict[str, Any]) -> None:
        record["n"] > 0  # noqa: B015 - the missing return is the point

    with pytest.raises(TypeError, match=r"every record would be filtered out\. Hint: return"):
        records.filter(is_big)
    with pytest.raises(TypeError, match=r"route 'big' .*no record would take this route"):
        records.forward(big=is_big)


def test_a_map_that_copies_an_event_with_a_wrong_value_makes_a_dead_letter(tmp_path: Any) -> None:
    """A changed copy is validated: a wrong value stops at the map, never reaches the file."""
    out = tmp_path / "out.jsonl"
    s = Pipeline("copy").read(sources.memory(EVENTS)).filter(Purchase)
    priced = s.map(lambda p: p.model_copy(update={"amount": "free" if p.user == "a" else "7"}))
    result = priced.write(sinks.jsonl(out)).run()
    assert result.reconciles
    (letter,) = result.dead_letters
    assert (letter.step, letter.kind, letter.error_type) == ("map", "user_error", "ValidationError")
    assert "amount" in letter.message and '"user":"a"' in letter.payload
    (written,) = [Purchase.model_validate_json(line) for line in out.read_text().splitlines()]
    assert (written.user, written.amount) == ("b", 7.0)
