"""Each reader's own record: a function that changes its input in place changes nothing else.

A stream read by two steps, a record on several ``mode="all"`` routes, an
event with two handlers: each gets its own copy of a mutable record (a dict,
an object that is not frozen), so one branch's in-place change is not seen
by the other, whatever order the engine runs them in; and the records of a
memory source are the run's own, so the user's list is the same after a run
and a second run gives the same result.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from operators import Event
from operators._owned import own, owned
from pipelines import Pipeline, sinks, sources


def rows() -> list[dict[str, Any]]:
    return [{"n": i, "tags": [i]} for i in range(50)]


def bump(row: dict[str, Any]) -> dict[str, Any]:
    """A careless map: changes its input in place and returns it."""
    row["n"] += 1000
    row["tags"].append("seen")
    return row


def plain(row: dict[str, Any]) -> tuple[int, int]:
    return row["n"], len(row["tags"])


EXPECTED_BUMPED = sorted((i + 1000, 2) for i in range(50))
EXPECTED_PLAIN = sorted((i, 1) for i in range(50))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bumped_first", [True, False])
@pytest.mark.parametrize("after_a_step", [False, True])
def test_a_stream_read_by_two_steps_gives_each_its_own_records(
    workers: int, bumped_first: bool, after_a_step: bool
) -> None:
    given = rows()
    before = copy.deepcopy(given)
    stream = Pipeline("two").read(sources.memory(given, batch_size=7))
    if after_a_step:  # the stream a step made, not the reader's own
        stream = stream.filter(lambda r: True, name="all")
    bumped = stream.map(bump, name="bump").map(plain, name="bumped").write(sinks.memory("b"))
    kept = stream.map(plain, name="plain").write(sinks.memory("p"))
    pipeline = bumped | kept if bumped_first else kept | bumped
    result = pipeline.run(workers=workers)
    assert sorted(result["b"]) == EXPECTED_BUMPED
    assert sorted(result["p"]) == EXPECTED_PLAIN
    assert result.reconciles
    assert given == before  # the user's list is as it was
    again = pipeline.run(workers=workers)  # and a second run gives the same
    assert sorted(again["b"]) == EXPECTED_BUMPED and sorted(again["p"]) == EXPECTED_PLAIN


@pytest.mark.parametrize("workers", [1, 2])
def test_every_match_routes_each_get_their_own_record(workers: int) -> None:
    given = rows()
    routes = (
        Pipeline("routes")
        .read(sources.memory(given, batch_size=7))
        .forward(first=lambda r: True, second=lambda r: r["n"] % 2 == 0, mode="all")
    )
    for order in ("first", "second"):
        changed = getattr(routes, order).map(bump, name="bump").map(plain, name="after_bump")
        kept_name = "second" if order == "first" else "first"
        kept = getattr(routes, kept_name).map(plain, name="kept")
        result = (changed.write(sinks.memory("b")) | kept.write(sinks.memory("k"))).run(
            workers=workers
        )
        evens = [i for i in range(50) if i % 2 == 0]
        changed_in = range(50) if order == "first" else evens
        kept_in = evens if order == "first" else range(50)
        assert sorted(result["b"]) == sorted((i + 1000, 2) for i in changed_in)
        assert sorted(result["k"]) == sorted((i, 1) for i in kept_in)
        assert result.counts["forward_first_second"].created == 25
        assert result.reconciles


@dataclass
class Note:
    """A mutable record (not frozen): handlers may change it."""

    text: str
    marks: list[str] = field(default_factory=list)


def test_an_events_handlers_each_get_their_own_copy() -> None:
    def shout(note: Note) -> str:
        note.text += "!"
        note.marks.append("shouted")
        return f"{note.text} {note.marks}"

    def echo(note: Note) -> str:
        return f"{note.text} {note.marks}"

    given = [Note("a"), Note("b")]
    for handlers in ([shout, echo], [echo, shout]):
        result = (
            Pipeline("bus")
            .read(sources.memory(given))
            .dispatch({Note: handlers})
            .write(sinks.memory("o"))
            .run()
        )
        assert sorted(result["o"]) == ["a []", "a! ['shouted']", "b []", "b! ['shouted']"]
        assert result.reconciles
    assert given == [Note("a"), Note("b")]


class Order(Event):
    type: Literal["order"] = "order"
    amount: int


class Basket(Event):
    type: Literal["basket"] = "basket"
    items: list[str]


@dataclass(frozen=True)
class Point:
    x: int
    extra: Any = None


def test_immutable_records_are_handed_on_as_they_are_and_mutable_ones_copied() -> None:
    order = Order(amount=3)
    shared: list[Any] = [order, "text", 7, 2.5, None, (1, "a", (2, 3)), Point(1), b"x"]
    for record in shared:
        assert own(record) is record, record
    basket = Basket(items=["a"])  # frozen, but its list may be changed in place
    mutable: list[Any] = [{"n": 1}, [1], basket, (1, [2]), Point(1, [2]), Note("n"), {1}]
    for record in mutable:
        mine = own(record)
        assert mine is not record and mine == record, record
    mine = own(basket)
    mine.items.append("b")
    assert basket.items == ["a"]
    listed = owned([order, {"n": 1}])
    assert listed[0] is order and listed[1] == {"n": 1}


def test_a_function_that_sets_an_events_field_is_told_how_to_copy_it() -> None:
    def discount(order: Order) -> Order:
        order.amount -= 1  # events are frozen: this raises
        return order

    orders = [Order(amount=i) for i in range(3)]
    stream = Pipeline("frozen").read(sources.memory(orders))
    mapped = stream.map(discount, name="discount").write(sinks.memory("m"))
    handled = stream.dispatch({Order: discount}, name="handle").write(sinks.memory("d"))
    result = (mapped | handled).run()
    assert result["m"] == [] and result["d"] == []
    assert sorted(d.step for d in result.dead_letters) == ["discount"] * 3 + ["handle"] * 3
    for dead in result.dead_letters:
        assert dead.kind == "user_error" and "frozen" in dead.message
        assert dead.message.endswith("e.model_copy(update={'amount': ...}).")
    assert [o.amount for o in orders] == [0, 1, 2] and result.reconciles
