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
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import pytest

from operators import Event, agg, windows
from operators._owned import own, owned
from pipelines import Pipeline, sinks, sources, stateful


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


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def timed_rows(n: int, keys: str = "a") -> list[dict[str, Any]]:
    return [{"k": keys[i % len(keys)], "n": i, "t": T0 + timedelta(seconds=i)} for i in range(n)]


def careless(record: Any) -> Any:
    """A later step that changes what it is given in place."""
    if isinstance(record, dict):
        record["total"] = -1
    else:
        record.left["n"] = -1
    return record


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_an_emitted_state_is_sent_on_as_it_was_and_later_steps_do_not_change_it(
    batch_size: int,
) -> None:
    # ctx.emit(state) sent the state object itself: a sink that read it after the
    # batch saw its last value, so the output depended on the batch size, and a later
    # step that changed it changed the key's state.
    def running(state: dict[str, Any], row: dict[str, Any], ctx: Any) -> dict[str, Any]:
        state["total"] = state.get("total", 0) + row["n"]
        ctx.emit(state)
        return state

    keyed = (
        Pipeline("emit")
        .read(sources.memory(timed_rows(8), batch_size=batch_size))
        .key_by(lambda r: r["k"])
    )
    totals = keyed.process(running, initial=dict, clock=windows.event_time(lambda r: r["t"])).map(
        careless, name="careless"
    )
    result = totals.map(lambda s: s["total"], name="total").write(sinks.memory("o")).run()
    assert result["o"] == [-1] * 8
    plain = keyed.process(running, initial=dict, clock=windows.event_time(lambda r: r["t"]))
    result = plain.write(sinks.memory("o")).run()
    assert [s["total"] for s in result["o"]] == [0, 1, 3, 6, 10, 15, 21, 28]
    both = (
        plain.write(sinks.memory("o"))
        | plain.map(careless, name="careless").write(sinks.memory("c"))
    ).run()
    assert [s["total"] for s in both["o"]] == [0, 1, 3, 6, 10, 15, 21, 28]


@pytest.mark.parametrize("batch_size", [1, 100])
def test_a_stateful_handlers_output_is_as_the_state_was_then(batch_size: int) -> None:
    def keep(state: list[int], row: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        state.append(row["n"])
        return state, {"seen": state}  # the state itself in the output

    result = (
        Pipeline("stateful")
        .read(sources.memory(timed_rows(4), batch_size=batch_size))
        .key_by(lambda r: r["k"])
        .dispatch({dict: stateful(keep, initial=list)}, out=dict)
        .write(sinks.memory("o"))
        .run()
    )
    assert [o["seen"] for o in result["o"]] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]


def test_a_joined_record_held_in_state_is_each_results_own() -> None:
    # one left record meets three right ones: the three results held the same dict, so a
    # later step that changed it in one result changed the next ones
    left = [{"k": "a", "n": 1, "t": T0}]
    right = [{"k": "a", "m": i, "t": T0 + timedelta(seconds=i)} for i in range(3)]
    p = Pipeline("join")
    clock = windows.event_time(lambda r: r["t"])
    ls = p.read(sources.memory(left), name="l").key_by(lambda r: r["k"], name="lk")
    rs = p.read(sources.memory(right), name="r").key_by(lambda r: r["k"], name="rk")

    def read_then_spoil(joined: Any) -> tuple[int, int]:
        seen = (joined.left["n"], joined.right["m"])
        joined.left["n"] = -1
        return seen

    for kind in ({"window": windows.tumbling(minutes=1)}, {"between": (-60.0, 60.0)}):
        joined = ls.join(rs, clock=clock, **kind)  # type: ignore[call-overload]
        result = joined.map(read_then_spoil).write(sinks.memory("o")).run()
        assert sorted(result["o"]) == [(1, 0), (1, 1), (1, 2)], kind
    assert left == [{"k": "a", "n": 1, "t": T0}]


def test_sliding_windows_results_hold_their_own_records() -> None:
    # a record is in two sliding windows: a later step that changed it in the first
    # window's result changed the second's
    results = (
        Pipeline("slide")
        .read(sources.memory(timed_rows(4)))
        .key_by(lambda r: r["k"])
        .window(
            windows.sliding(seconds=4, every=timedelta(seconds=2)),
            clock=windows.event_time(lambda r: r["t"]),
        )
        .aggregate(rows=agg.collect())
    )

    def read_then_spoil(result: Any) -> list[int]:
        seen = [r["n"] for r in result.rows]
        for r in result.rows:
            r["n"] = -1
        return seen

    out = results.map(read_then_spoil).write(sinks.memory("o")).run()
    assert sorted(out["o"]) == [[0, 1], [0, 1, 2, 3], [2, 3]]


def test_own_shares_what_is_immutable_inside_what_it_copies() -> None:
    orders = [Order(amount=i) for i in range(3)]
    mine = own(orders)
    assert mine is not orders and all(a is b for a, b in zip(mine, orders, strict=True))
    nested = {"orders": orders, "tags": {"a"}, "pair": (1, [2])}
    copied = own(nested)
    assert copied == nested and copied["orders"][0] is orders[0]
    assert copied["pair"][1] is not nested["pair"][1] and copied["tags"] is not nested["tags"]
    loop: list[Any] = []
    loop.append(loop)  # a structure that holds itself is deep-copied
    assert own(loop) is not loop


class Connection:
    """A record that cannot be copied: it holds a lock."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()


def test_a_record_that_cannot_be_copied_is_handed_on_as_it_is() -> None:
    # a copy for the second reader failed ("cannot pickle '_thread.lock' object") and
    # stopped the run
    given = [Connection(i) for i in range(5)]
    stream = Pipeline("locks").read(sources.memory(given))
    doubled = stream.map(lambda c: c.n * 2, name="double").write(sinks.memory("d"))
    kept = stream.filter(lambda c: c.n % 2 == 0, name="even").write(sinks.memory("e"))
    result = (doubled | kept).run(workers=2)
    assert sorted(result["d"]) == [0, 2, 4, 6, 8]
    assert sorted(c.n for c in result["e"]) == [0, 2, 4]
    assert all(any(c is g for g in given) for c in result["e"])  # the records themselves
    assert result.reconciles


class Node(Event):
    """A frozen event that may hold others of its class."""

    type: Literal["node"] = "node"
    name: str
    children: tuple[Node, ...] = ()


def test_a_frozen_event_of_its_own_class_inside_is_shared_or_copied_as_it_holds() -> None:
    leaf = Node(name="leaf")
    tree = Node(name="root", children=(leaf, Node(name="b")))
    assert own(tree) is tree  # immutable all the way down: shared
    listed = Basket(items=["a"])
    assert own((tree, listed))[1] is not listed
