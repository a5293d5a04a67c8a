"""Joins: worked examples, misuse found when the step is added, processes, crashes, state."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from operators import COUNTER_FIELDS, Counters, Event, Joined, agg, windows
from operators._joining import JoinLogic, JoinSpec
from operators._keying import Marked
from pipelines import Pipeline, render, sinks, sources, testing
from tests.helpers import (
    Halts,
    kill_at_random,
    printed_under_hash_seeds,
    resumed_until_done,
    sorted_lines,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Order(Event):
    customer: str
    amount: float = 0.0


class Payment(Event):
    customer: str
    order_id: str = ""


class Customer(Event):
    customer: str
    tier: str = "basic"
    closed: bool = False


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def order(id_: str, seconds: float, customer: str = "ada") -> Order:
    return Order(customer=customer, id=id_, time=at(seconds))


def pay(id_: str, seconds: float, customer: str = "ada") -> Payment:
    return Payment(customer=customer, id=id_, time=at(seconds))


def two_sides(
    orders: list[Order], other: list[Any], *, name: str = "p"
) -> tuple[Any, Any]:  # fmt: skip
    p = Pipeline(name)
    left = p.read(sources.memory(orders), name="orders").key_by(
        lambda o: o.customer, name="by_customer"
    )
    right = p.read(sources.memory(other), name="others").key_by(
        lambda o: o.customer, name="other_by_customer"
    )
    return left, right


def test_enrich_orders_with_the_customer_row_valid_at_their_time() -> None:
    orders = [
        order("o1", 5, "ada"),
        order("o2", 15, "ada"),
        order("o3", 15, "bob"),
        order("o4", 40, "ada"),
    ]
    customers = [
        # Read after the orders, whatever the schedule: each order still meets
        # the row valid at its own time.
        Customer(customer="ada", tier="basic", id="c1", time=at(0)),
        Customer(customer="ada", tier="gold", id="c2", time=at(10)),
        Customer(customer="ada", closed=True, id="c3", time=at(30)),
    ]
    left, right = two_sides(orders, customers)
    enriched = left.join(
        right.as_table(deleted=lambda c: c.closed),
        select=lambda o, c: (o.id, None if c is None else c.tier),
    )
    result = enriched.write(sinks.memory("out")).run(workers=2)
    assert sorted(result["out"]) == [("o1", "basic"), ("o2", "gold"), ("o3", None), ("o4", None)]
    assert result.reconciles and result.open_windows == 0


def test_table_rows_expire_after_their_ttl_and_unmatched_events_are_dead_letters() -> None:
    orders = [
        order("o1", 5, "ada"),
        order("o2", 50, "ada"),
    ]
    left, right = two_sides(orders, [Customer(customer="ada", id="c1", time=at(0))])
    joined = left.join(right.as_table(ttl=timedelta(seconds=30)), missing="dead_letter")
    result = joined.write(sinks.memory("out")).run()
    assert [(j.left.id, j.right.id) for j in result["out"]] == [("o1", "c1")]
    (letter,) = result.dead_letters
    assert letter.kind == "unmatched" and json.loads(letter.payload)["id"] == "o2"
    assert "ttl" in letter.message and result.reconciles


def test_window_join_left_and_outer_emit_what_met_nothing() -> None:
    orders = [
        order("o1", 1, "ada"),
        order("o2", 2, "bob"),
    ]
    pays = [
        pay("p1", 3, "ada"),
        pay("p2", 4, "cyd"),
    ]
    found = {}
    for how in ("inner", "left", "outer"):
        left, right = two_sides(orders, pays, name=f"w_{how}")
        joined = left.join(right, window=windows.tumbling(seconds=10), how=how)  # type: ignore[call-overload]
        result = joined.write(sinks.memory("out")).run()
        found[how] = sorted(
            (j.key, j.left and j.left.id, j.right and j.right.id) for j in result["out"]
        )
        assert all(isinstance(j, Joined) and j.end == at(10) for j in result["out"])
    assert found["inner"] == [("ada", "o1", "p1")]
    assert found["left"] == [("ada", "o1", "p1"), ("bob", "o2", None)]
    assert found["outer"] == [("ada", "o1", "p1"), ("bob", "o2", None), ("cyd", None, "p2")]


def test_a_window_join_on_windows_aligned_off_the_epochs_grid_pairs_within_them() -> None:
    # windows of 10 s starting at 4 s past each ten:  [-6 ... 4)[4 ......... 14)[14 ...
    # orders:                                                o1 at 3   o2 at 5
    # payments:                                         p1 at 2        p2 at 13   p3 at 14
    orders = [order("o1", 3), order("o2", 5)]
    pays = [pay("p1", 2), pay("p2", 13), pay("p3", 14)]
    aligned = {
        "tumbling": windows.tumbling(seconds=10, align_to=at(4)),
        "sliding": windows.sliding(seconds=10, every=5, align_to=at(4)),
    }
    found = {}
    for kind, window in aligned.items():
        left, right = two_sides(orders, pays, name=f"aligned_{kind}")
        result = left.join(right, window=window).write(sinks.memory("out")).run(workers=2)
        found[kind] = sorted(
            (j.left.id, j.right.id, (j.start - T0).total_seconds()) for j in result["out"]
        )
    assert found["tumbling"] == [("o1", "p1", -6.0), ("o2", "p2", 4.0)]
    # sliding: [-6, 4) holds o1 and p1; [-1, 9) o1, p1 and o2; [4, 14) o2 and p2; [9, 19) no order
    assert found["sliding"] == [
        ("o1", "p1", -6.0),
        ("o1", "p1", -1.0),
        ("o2", "p1", -1.0),
        ("o2", "p2", 4.0),
    ]


def test_every_result_of_a_join_has_an_id_of_its_own_on_every_run() -> None:
    # A sink that de-duplicates by id (JetStream's Nats-Msg-Id) dropped results: a pair
    # in three sliding windows gave three results of one id, and ids of records and
    # keys holding "/" could be read two ways ("x/y" + "z" and "x" + "y/z").
    orders = [order("x/y", 12, "ada"), order("x", 13, "ada"), order("-", 14, "a/b%")]
    orders += [order("o9", 41, "ada")]
    pays = [pay("z", 15, "ada"), pay("y/z", 16, "ada"), pay("q", 17, "a/b%")]
    windowed = {
        "sliding": windows.sliding(seconds=30, every=10),
        "tumbling": windows.tumbling(seconds=30),
        "session": windows.session(seconds=30),
    }
    for name in [*windowed, "interval", "table"]:
        runs = []
        for batch in (1, 1000):
            p = Pipeline(f"ids_{name}")
            left = p.read(sources.memory(orders, batch_size=batch), name="o")
            right = p.read(sources.memory(pays, batch_size=batch), name="r")
            lk = left.key_by(lambda o: o.customer, name="lk")
            rk = right.key_by(lambda x: x.customer, name="rk")
            if name in windowed:
                joined = lk.join(rk, window=windowed[name], how="outer", name="j")
            elif name == "interval":
                joined = lk.join(rk, between=(0, 10), how="outer", name="j")
            else:
                joined = lk.join(rk.as_table(), name="j")
            result = joined.write(sinks.memory("out")).run()
            ids = [j.id for j in result["out"]]
            assert len(set(ids)) == len(ids), (name, sorted(ids))
            runs.append(sorted(ids))
        assert runs[0] == runs[1], name


def test_records_without_ids_give_every_pair_an_id_of_its_own() -> None:
    # Dicts (a pipeline without a schema) and tuples have no `id` attribute: every pair of
    # a key and window was `step/key/start/-/-`, and a de-duplicating sink kept one.
    orders = [{"id": f"o/{i}", "c": "ada", "ts": 100.0 + i} for i in range(3)]
    orders += [{"c": "ada", "ts": 105.0 + i, "n": i} for i in range(3)]
    orders += [{"c": "ada", "ts": 109.0}, {"c": "ada", "ts": 109.0}]  # identical, no ids
    pays = [{"c": "ada", "ts": 101.0 + i} for i in range(3)]
    pays += [{"id": "%23p", "c": "ada", "ts": 103}]  # an id like a digest stays an id
    windowed = {
        "sliding": windows.sliding(seconds=30, every=10),
        "tumbling": windows.tumbling(seconds=30),
        "session": windows.session(seconds=30),
    }
    clock = windows.event_time(lambda d: d["ts"])
    for name in [*windowed, "interval", "table"]:
        runs = []
        for batch in (1, 3, 1000):
            p = Pipeline(f"dict_ids_{name}")
            # The identical orders are told apart by their count in a window only.
            lefts = orders if name in windowed else orders[:-1]
            left = p.read(sources.memory(lefts, batch_size=batch), name="o")
            right = p.read(sources.memory(pays, batch_size=batch), name="r")
            lk = left.key_by(lambda o: o["c"], name="lk")
            rk = right.key_by(lambda x: x["c"], name="rk")
            if name in windowed:
                joined = lk.join(rk, window=windowed[name], clock=clock, name="j")
            elif name == "interval":
                joined = lk.join(rk, between=(-30, 30), clock=clock, name="j")
            else:
                joined = lk.join(rk.as_table(), clock=clock, name="j")
            result = joined.write(sinks.memory("out")).run()
            ids = [j.id for j in result["out"]]
            assert result.reconciles and len(ids) >= len(lefts), (name, ids)
            assert len(set(ids)) == len(ids), (name, sorted(ids))
            # A given id is kept (escaped): a record's own "%23" is not taken for a digest.
            assert any("/o%2F1/" in i for i in ids), ids
            assert any(i.endswith("/%2523p") for i in ids) and not any("/%23p" in i for i in ids)
            runs.append(sorted(ids))
        assert runs[0] == runs[1] == runs[2], name


def test_a_result_id_of_records_holding_sets_of_text_is_the_same_in_every_program_run() -> None:
    # The digest of an event without an id held its set in its hashes' order, which text's
    # hash makes differ between runs: a rerun (or a resume in a new process) named the same
    # pair otherwise, and a sink that de-duplicates by id kept both.
    program = (
        "from datetime import datetime, timezone\n"
        "from operators import Event, windows\n"
        "from pipelines import Pipeline, sinks, sources\n"
        "t = datetime(2026, 1, 1, tzinfo=timezone.utc)\n"
        "class Tagged(Event):\n"
        "    c: str\n"
        "    tags: frozenset[str]\n"
        "    extra: dict[str, object] = {}\n"
        "class Paid(Event):\n"
        "    c: str\n"
        "p = Pipeline('sets')\n"
        "left = [Tagged(c='ada', tags=frozenset('abcdefgh'), time=t),\n"
        "        Tagged(c='ada', tags=frozenset('xy'), extra={'s': set('pqrstu')}, time=t)]\n"
        "lk = p.read(sources.memory(left), name='l').key_by(lambda e: e.c, name='lk')\n"
        "rk = p.read(sources.memory([('ada', frozenset('mnopqr'))]), name='r').key_by(\n"
        "    lambda r: r[0], name='rk')\n"
        "clock = windows.event_time(lambda r: t if isinstance(r, tuple) else r.time)\n"
        "j = lk.join(rk, window=windows.tumbling(minutes=1), clock=clock, name='j')\n"
        "import json\n"
        "print(json.dumps(sorted(r.id for r in j.write(sinks.memory('out')).run()['out'])))\n"
    )
    seen = printed_under_hash_seeds(program)
    assert len(seen) == 1, seen
    ids = json.loads(seen.pop())
    assert len(ids) == 2 and len(set(ids)) == 2 and all("/%23" in i for i in ids), ids


def test_a_pair_in_several_sliding_windows_gives_a_result_per_window_named_by_its_start() -> None:
    left, right = two_sides([order("x", 13)], [pay("y/z", 16)], name="ids_sliding")
    joined = left.join(right, window=windows.sliding(seconds=30, every=10), name="j")
    result = joined.write(sinks.memory("out")).run()
    base = T0.timestamp()
    assert sorted((j.start, j.id) for j in result["out"]) == [
        (at(start), f"j/ada/{base + start:.6f}/x/y%2Fz") for start in (-10, 0, 10)
    ]


def test_interval_join_matches_payments_within_ten_minutes_of_their_order() -> None:
    orders = [
        order("o1", 0, "ada"),
        order("o2", 900, "ada"),
    ]
    pays = [
        pay("p1", 599, "ada"),
        pay("p2", 601, "ada"),  # too late for o1, too early for o2
        pay("p3", 1000, "ada"),
    ]
    left, right = two_sides(orders, pays)
    paid = left.join(right, between=(timedelta(0), timedelta(minutes=10)), how="left")
    result = paid.write(sinks.memory("out")).run()
    assert sorted((j.left.id, j.right and j.right.id) for j in result["out"]) == [
        ("o1", "p1"),
        ("o2", "p3"),
    ]
    assert all(j.time == max(j.left.time, j.right.time) for j in result["out"])


@pytest.mark.parametrize(
    ("delay", "sliding"), [(0, False), (600, False), (0, True), (120, True), (120, False)]
)
def test_a_selected_record_dated_before_its_pair_is_late_or_not_whatever_the_batches(
    delay: int, sliding: bool
) -> None:
    """``select=lambda o, p: o`` gives each pair its order, dated before the pair (the
    payment's time, up to 10 minutes later). A window on the orders' own time after the
    join judges each against when the join made it, less the window's max_delay: the
    same orders are late on every schedule (with no delay, those whose window ended
    before their payment; with 10 minutes, none), for tumbling and sliding windows."""
    window = windows.sliding(minutes=10, every=300) if sliding else windows.tumbling(minutes=5)
    orders = [order(f"o{i}", 60 * i, "abc"[i % 3]) for i in range(30)]
    pays = [pay(f"p{j}", 60 * (j + 7), "abc"[j % 3]) for j in range(30)]
    expected: Counter[tuple[str, float]] = Counter()
    late = 0
    for o in orders:
        for p in pays:
            t, made = o.time.timestamp(), p.time.timestamp()
            if o.customer == p.customer and t <= made <= t + 600:
                open_ = [start for start, end in window.assign(t) if end > made - delay]
                late += not open_
                expected.update((o.customer, start) for start in open_)
    assert late if delay < 600 else not late  # the case is there
    for batch, workers in [(1, 1), (2, 1), (5, 2), (1000, 1), (1000, 2)]:
        p = Pipeline("paid_orders")
        left = p.read(sources.memory(orders, batch_size=batch), name="orders").key_by(
            lambda o: o.customer, name="by_customer"
        )
        right = p.read(sources.memory(pays, batch_size=batch), name="pays").key_by(
            lambda o: o.customer, name="pay_customer"
        )
        paid = left.join(
            right, between=(timedelta(0), timedelta(minutes=10)), select=lambda o, _: o
        )
        counted = (
            paid.key_by(lambda o: o.customer, name="again")
            .window(window, clock=windows.event_time(max_delay=delay))
            .aggregate(n=agg.count())
        )
        result = (counted.write(sinks.memory("n")) | counted.late.write(sinks.memory("late"))).run(
            workers=workers
        )
        got = Counter({(r.key, r.start.timestamp()): r.n for r in result["n"]})
        assert (got, len(result["late"])) == (expected, late), (batch, workers)
        assert result.reconciles


def test_a_failing_select_is_a_dead_letter_with_both_records() -> None:
    left, right = two_sides(
        [order("o1", 0, "ada")],
        [pay("p1", 1, "ada")],
    )
    joined = left.join(right, between=(0, 5), select=lambda o, p: 1 / 0)
    result = joined.write(sinks.memory("out")).run()
    (letter,) = result.dead_letters
    assert letter.kind == "user_error" and letter.error_type == "ZeroDivisionError"
    assert {"key", "left", "right"} <= set(json.loads(letter.payload))
    assert result.reconciles


def test_a_select_that_never_returns_a_value_is_refused_when_the_join_is_added() -> None:
    # every match became None, and the run reconciled
    left, right = two_sides([order("o1", 0, "ada")], [pay("p1", 1, "ada")])

    def pair(o: Order, p: Payment) -> None:
        print(o.id, p.id)

    with pytest.raises(TypeError, match=r"select <.*pair line \d+> never returns a value"):
        left.join(right, between=(0, 5), select=pair)


def test_a_failing_deleted_function_is_a_dead_letter_with_the_row_and_the_run_goes_on() -> None:
    customers = [
        Customer(customer="ada", tier="gold", id="c1", time=at(0)),
        Customer(customer="bob", tier="broken", id="c2", time=at(0)),
    ]
    left, right = two_sides([order("o1", 5, "ada"), order("o2", 5, "bob")], customers)

    def deleted(c: Customer) -> bool:
        if c.tier == "broken":
            raise ValueError("no such tier")
        return c.closed

    joined = left.join(
        right.as_table(deleted=deleted),
        select=lambda o, c: (o.id, None if c is None else c.tier),
    )
    result = joined.write(sinks.memory("out")).run()
    # The row that could not be judged is not in the table: bob's order meets none.
    assert sorted(result["out"]) == [("o1", "gold"), ("o2", None)]
    (letter,) = result.dead_letters
    assert letter.kind == "user_error" and letter.error_type == "ValueError"
    assert json.loads(letter.payload)["id"] == "c2" and "deleted" in letter.message
    assert result.reconciles


def test_late_records_of_either_side_go_to_late() -> None:
    orders = [
        order("o1", 100, "ada"),
        order("o0", 1, "ada"),
    ]
    left, right = two_sides(orders, [pay("p1", 100, "ada")])
    joined = left.join(right, between=(0, 5))
    flow = joined.write(sinks.memory("out")) | joined.late.write(sinks.memory("late"))
    result = flow.run()
    assert [e.id for e in result["late"]] == ["o0"]
    assert [(j.left.id, j.right.id) for j in result["out"]] == [("o1", "p1")]
    assert result.counts["join_interval"].late == 1


# -- misuse: found when the step is added -----------------------------------------


def test_misuse_fails_when_the_join_is_added() -> None:
    left, right = two_sides([], [])
    with pytest.raises(TypeError, match="other side must be a keyed stream"):
        left.join(Pipeline("p").read(sources.memory([]), name="x"), between=(0, 1))  # type: ignore[call-overload]
    with pytest.raises(AttributeError, match="not keyed, so it has no join"):
        Pipeline("p").read(sources.memory([])).join  # noqa: B018
    with pytest.raises(ValueError, match=r"exactly one of window= .* or between="):
        left.join(right)
    with pytest.raises(ValueError, match="lower bound is above the upper one"):
        left.join(right, between=(10, 0))
    # An interval past the dates made every record a dead letter at run time.
    for endless in (1e12, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"finite and at most 1000 years either way"):
            left.join(right, between=(0, endless))
    with pytest.raises(TypeError, match="tumbling, sliding or session"):
        left.join(right, window=windows.count(3))
    with pytest.raises(TypeError, match="must be event time"):
        left.join(right, between=(0, 1), clock=windows.processing_time())
    with pytest.raises(ValueError, match=r"how must be one of .*; got 'cross'\. Hint: how="):
        left.join(right, between=(0, 1), how="cross")  # type: ignore[call-overload]
    with pytest.raises(
        ValueError, match=r"Hint: a right join is .*right\.join\(left, how='left'\)"
    ):
        left.join(right, between=(0, 1), how="right")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="takes no window= or between="):
        left.join(right.as_table(), window=windows.tumbling(seconds=1))  # type: ignore[call-overload]
    # missing= of a join of two streams was silently ignored.
    with pytest.raises(ValueError, match=r"missing= is for a join with a table; .* how="):
        left.join(right, between=(0, 1), missing="dead_letter")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"a table \(of 'other_by_customer'\) is the right side"):
        right.as_table().join(left)
    # A table used as a stream raised a bare "'Table' object has no attribute 'write'".
    for method in ("write", "filter", "map", "window", "key_by"):
        with pytest.raises(
            AttributeError, match=rf"table \(of 'other_by_customer'\) has no {method}\(\): .*Hint"
        ):
            getattr(right.as_table(), method)


def by_customer_of_order(o: Order) -> str:
    return o.customer


def test_keys_of_different_types_and_fields_without_time_are_refused() -> None:
    p = Pipeline("p")
    orders = p.read(sources.memory([], schema=Order), name="orders")
    pays = p.read(sources.memory([], schema=Payment), name="pays")

    def by_amount(o: Order) -> int:
        return int(o.amount)

    def by_customer(x: Payment) -> str:
        return x.customer

    # A key function declared to return something else than a str is refused by
    # key_by itself (it made every record a key_error dead letter).
    with pytest.raises(TypeError, match=r"by_amount line \d+> is declared to return int; keys"):
        orders.key_by(by_amount)  # type: ignore[arg-type]

    def by_sku(o: Order) -> Sku:  # type: ignore[name-defined]  # noqa: F821 - unresolvable
        return o.customer

    # One whose declared type key_by cannot resolve is compared with the other side's.
    with pytest.raises(TypeError, match="keyed by different types"):
        orders.key_by(by_sku).join(pays.key_by(by_customer), between=(0, 1))
    # `-> str` written in a module without postponed annotations (a class, not the
    # string "str") was "a different type" from this module's `-> str`.
    plain: dict[str, Any] = {}
    code = compile(
        "def by_plain(x) -> str:\n    return x.customer", "<plain>", "exec", dont_inherit=True
    )
    exec(code, plain)
    joined = orders.key_by(by_customer_of_order).join(
        pays.key_by(plain["by_plain"], name="plain_key"), between=(0, 1)
    )
    assert joined.step == "join_interval"
    with pytest.raises(
        ValueError, match=r"^join 'join' \(left side, from .*'when' is not a field of Order"
    ):
        orders.key_by(lambda o: o.customer).join(
            pays.key_by(by_customer), between=(0, 1), clock=windows.event_time("when")
        )


def test_an_event_time_join_after_a_running_aggregate_is_refused() -> None:
    from operators import agg

    left, right = two_sides([], [])
    counted = left.aggregate(n=agg.count(), emit="running")
    with pytest.raises(ValueError, match="whose results carry no watermark"):
        counted.key_by(lambda r: r.key).join(right, between=(0, 1))


# -- pictures, preview, testing.run -------------------------------------------------


def test_a_join_is_drawn_with_both_inputs_and_previewed() -> None:
    left, right = two_sides([order("o1", 0, "ada")], [pay("p1", 1, "ada")])
    flow = left.join(right, between=(0, 5), name="paid").write(sinks.memory("out"))
    mermaid = render.to_mermaid(flow)
    drawing = render.drawing(flow)
    ids = {b.name: b.id for b in drawing.boxes}
    into = {(e.source, e.target) for e in drawing.edges}
    assert (ids["by_customer"], ids["paid"]) in into
    assert (ids["other_by_customer"], ids["paid"]) in into
    assert "paid" in mermaid and "between 0s and 5s" in render.describe(flow.graph["paid"])
    result = testing.run(flow)
    assert [j.id for j in result["out"]] == ["paid/ada/o1/p1"]
    assert [j.id for j in flow.preview(limit=5)["out"]] == ["paid/ada/o1/p1"]
    assert result.counts["paid"].created == 1 and result.counts["paid"].aggregated == 2


def test_joined_records_written_to_a_file_read_back_as_joined(tmp_path: Path) -> None:
    # Joined[Order, Payment] took the literal type "joined[order, payment]", and every
    # record a join had written (type: the step's name) was a validation dead letter.
    left, right = two_sides(
        [order("o1", 0), order("o2", 1, "bob")], [pay("p1", 2), pay("p2", 40, "bob")]
    )
    joined = left.join(right, between=(0, 5), how="left", name="paid")
    written = joined.write(sinks.jsonl(tmp_path / "paid.jsonl")).run()
    assert written.reconciles and written.written == 2
    back = (
        Pipeline("again")
        .read(sources.jsonl(tmp_path / "paid.jsonl", schema=Joined[Order, Payment]))
        .write(sinks.memory("o"))
        .run()
    )
    assert back.dead_letters == []
    got = sorted(back["o"], key=lambda j: j.id)
    assert [(j.type, j.key, j.left.id, j.right and j.right.id) for j in got] == [
        ("paid", "ada", "o1", "p1"),
        ("paid", "bob", "o2", None),
    ]
    assert isinstance(got[0].left, Order) and isinstance(got[0].right, Payment)


# -- processes, crashes, bounded state ----------------------------------------------


def orders_and_payments(n: int) -> tuple[list[Order], list[Payment]]:
    rng = random.Random(7)
    orders = [
        Order(customer=f"c{rng.randrange(40)}", id=f"o{i}", time=at(i * 0.5)) for i in range(n)
    ]
    pays = [
        Payment(customer=f"c{rng.randrange(40)}", id=f"p{i}", time=at(i * 0.5 + rng.uniform(0, 3)))
        for i in range(n)
    ]
    return orders, pays


@pytest.mark.parametrize("kind", ["window", "interval", "table"])
def test_each_join_on_two_processes_matches_one(kind: str) -> None:
    orders, pays = orders_and_payments(3000)
    p = Pipeline(f"procs_{kind}")
    left = p.read(sources.memory(orders, partitions=2, batch_size=100), name="orders")
    right = p.read(sources.memory(pays, partitions=3, batch_size=70), name="pays")
    left_k = left.key_by(lambda o: o.customer, name="lk")
    right_k = right.key_by(lambda x: x.customer, name="rk")
    clock = windows.event_time(max_delay=3)
    if kind == "window":
        joined = left_k.join(right_k, window=windows.sliding(10, 5), how="outer", clock=clock)
    elif kind == "interval":
        joined = left_k.join(right_k, between=(-2, 4), how="left", clock=clock)
    else:
        joined = left_k.join(right_k.as_table(ttl=20), clock=clock)
    flow = joined.write(sinks.memory("out"))
    one = flow.run()
    two = flow.run(processes=2)
    assert len(one["out"]) > 1000
    assert Counter(j.id for j in two["out"]) == Counter(j.id for j in one["out"])
    assert two.reconciles and two.counts == one.counts


APP = """
import os
from datetime import datetime, timedelta, timezone
from pipelines import Pipeline, sources, sinks, Event
from operators import windows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N = int(os.environ["EVENTS"])
RATE = float(os.environ["RATE"])

class Order(Event):
    customer: str

class Pay(Event):
    customer: str

def order(rng, i):
    return Order(customer=f"c{i % 37}", id=f"o{i}", time=T0 + timedelta(milliseconds=100 * i))

def pay(rng, i):
    return Pay(customer=f"c{(i * 7) % 37}", id=f"p{i}",
               time=T0 + timedelta(milliseconds=100 * i + 250))

p = Pipeline("crashjoin")
orders = p.read(sources.generate(order, count=N, partitions=2, batch_size=50, rate=RATE),
                name="orders").key_by(lambda o: o.customer, name="ok")
pays = p.read(sources.generate(pay, count=N, partitions=2, batch_size=50, rate=RATE),
              name="pays").key_by(lambda x: x.customer, name="pk")
joined = orders.join(pays, between=(timedelta(0), timedelta(seconds=30)), name="paid",
                     clock=windows.event_time(max_delay=1))
pipeline = joined.map(lambda j: {"id": j.id}).write(sinks.jsonl(os.environ["OUT"]))
"""


def expected_pairs(n: int) -> Counter[str]:
    orders = {i: (f"c{i % 37}", 100 * i) for i in range(n)}
    pays = {j: (f"c{(j * 7) % 37}", 100 * j + 250) for j in range(n)}
    by_customer: dict[str, list[tuple[int, int]]] = {}
    for j, (c, t) in pays.items():
        by_customer.setdefault(c, []).append((j, t))
    found: Counter[str] = Counter()
    for i, (c, t) in orders.items():
        for j, s in by_customer.get(c, []):
            if t <= s <= t + 30_000:
                found[f"paid/{c}/o{i}/p{j}"] += 1
    return found


def test_a_join_killed_at_random_and_resumed_writes_each_pair_exactly_once(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = tmp_path / "pairs.jsonl"
    n = 4000
    env = {**__import__("os").environ, "EVENTS": str(n), "RATE": "800", "OUT": str(out)}
    command = [
        sys.executable, "-m", "pipelines", "run", f"{app}:pipeline",
        "--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.1", "--quiet",
    ]  # fmt: skip
    kills = kill_at_random(command, env, kills=4, seed=3)
    assert kills >= 4
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = Counter(json.loads(line)["id"] for line in out.read_text().splitlines())
    want = expected_pairs(n)
    assert len(want) > 3000
    assert got == want


def feed(logic: JoinLogic, side: int, records: list[tuple[str, float, Any]]) -> list[Any]:
    """Give the logic one side's records; return its results (not its watermark reports)."""
    latest = max((r[1] for r in records), default=-1e300)
    out, _ = logic.on_batch([(side, Marked("read/part0", latest, False, records))])
    return [item for item in out if item[0] == "r"]


def join_spec(counters: Counters, kind: str, **more: Any) -> JoinSpec:
    """The spec of join step "j" (counted in row 0 of ``counters``), one partition a side."""
    return JoinSpec(
        pipeline="p",
        step="j",
        row=0,
        counters=counters,
        kind=kind,
        partitions=["0:read/part0", "1:read/part0"],
        **more,
    )


def test_table_rows_past_their_ttl_free_their_state() -> None:
    # 200,000 keys, each with one row; the stream then moves time on past the
    # ttl: every row is dropped before the input ends (bench/join_state.py
    # measures 1,000,000 keys).
    counters = Counters(["j"])
    logic = JoinLogic(join_spec(counters, "table", ttl=60.0), None)
    keys = 200_000
    feed(logic, 1, [(f"k{i}", float(i % 100), i) for i in range(keys)])
    open_ = COUNTER_FIELDS.index("open")
    assert counters.table()[0][open_] == keys and len(logic.held) == keys
    out = feed(logic, 0, [("k1", 50.0, "e1")])  # joined with k1's row once time passes 50
    assert out == []
    assert feed(logic, 1, [("other", 500.0, "x")]) == []  # the stream's watermark holds
    out = feed(logic, 0, [("k2", 400.0, "e2")])  # now both have passed every row's ttl
    assert [(j.left, j.right) for _, j in out] == [("e1", 1)]
    assert len(logic.held) == 1 and counters.table()[0][open_] == 2  # "other" and e2
    out, _ = logic.on_eof()
    assert [(j.left, j.right) for tag, j in out if tag == "r"] == [("e2", None)]
    assert counters.table()[0][open_] == 0


def test_interval_join_forgets_records_once_the_watermark_passes() -> None:
    counters = Counters(["j"])
    logic = JoinLogic(join_spec(counters, "interval", lower=0.0, upper=10.0), None)
    feed(logic, 0, [(f"k{i}", float(i % 50), i) for i in range(100_000)])
    feed(logic, 1, [(f"k{i}", float(i % 50) + 5, -i) for i in range(100_000)])
    assert counters.table()[0][COUNTER_FIELDS.index("created")] == 100_000
    feed(logic, 0, [("late_key", 100.0, "a")])
    feed(logic, 1, [("late_key", 100.0, "b")])
    assert set(logic.held) == {"late_key"}
    assert counters.table()[0][COUNTER_FIELDS.index("open")] == 2


def test_interval_join_on_one_hot_key_with_fractional_times_matches_a_direct_computation() -> None:
    # One key holds hundreds of records on each side: each record meets the
    # other side's by bisection, and the watermark drops a prefix of each side.
    # Times and bounds that floats cannot hold exactly: each pair must be what
    # `t + lower <= s <= t + upper` says for these very floats (0.5 + 0.9 <= 1.4,
    # though 1.4 - 0.9 < 0.5).
    lower, upper = 0.9, 1.3
    lefts = [(f"l{i}", i * 0.1) for i in range(600)]
    rights = [(f"r{j}", 0.1 + j * 0.3) for j in range(200)]
    rights += [(f"q{j}", j * 0.7) for j in range(85)]
    rights.sort(key=lambda r: r[1])
    expected = sorted(
        (lid, rid) for lid, t in lefts for rid, s in rights if t + lower <= s <= t + upper
    )
    met_left = {lid for lid, _ in expected}
    met_right = {rid for _, rid in expected}
    expected += [(lid, None) for lid, _ in lefts if lid not in met_left]
    expected += [(None, rid) for rid, _ in rights if rid not in met_right]

    def run(resume_at: int | None) -> list[tuple[str | None, str | None]]:
        counters = Counters(["j"])
        spec = join_spec(counters, "interval", how="outer", lower=lower, upper=upper)
        logic = JoinLogic(spec, None)
        out: list[Any] = []
        for chunks, at in enumerate(range(0, 600, 7), start=1):
            for side, records in ((0, lefts), (1, rights)):
                chunk = [("hot", ts, rid) for rid, ts in records if at * 0.1 <= ts < (at + 7) * 0.1]
                if chunk:
                    out += feed(logic, side, chunk)
            if chunks == resume_at:
                # A snapshot written before each side was kept in time order.
                snap = logic.snapshot()
                for sides in snap["held"].values():
                    for entries in sides:
                        entries.reverse()
                logic = JoinLogic(spec, snap)
        end, _ = logic.on_eof()
        out += [item for item in end if item[0] == "r"]
        if resume_at is None:  # (a resumed logic counts its snapshot's records again)
            assert counters.table()[0][COUNTER_FIELDS.index("open")] == 0
        assert logic.held == {}
        return sorted(((j.left, j.right) for _, j in out), key=str)

    assert run(None) == sorted(expected, key=str)
    assert run(40) == sorted(expected, key=str)


def test_a_session_join_of_one_key_with_thousands_of_sessions_resumes_from_any_order() -> None:
    # One side runs ahead of the other, so one key holds thousands of sessions
    # open; each record finds the sessions it overlaps by bisection, and one
    # that bridges two merges them. A snapshot of an earlier evflow, whose
    # sessions of a key are in no order, resumes to the same pairs.
    gap = 2.0
    lefts = [(f"l{i}", i * 3.0) for i in range(2000)]
    rights = [(f"r{i}", i * 3.0 + 1.5) for i in range(0, 2000, 3)]
    sessions: list[list[Any]] = []
    for rid, ts in sorted(lefts + rights, key=lambda r: r[1]):
        if sessions and ts < sessions[-1][1]:
            sessions[-1][1] = max(sessions[-1][1], ts + gap)
            sessions[-1][2].append(rid)
        else:
            sessions.append([ts, ts + gap, [rid]])
    expected = sorted(
        (a, b)
        for _, _, ids in sessions
        for a in ids
        if a.startswith("l")
        for b in ids
        if b.startswith("r")
    )
    assert len(expected) == 2 * len(rights)  # each right record bridged two left ones

    def run(resume: bool) -> list[tuple[str, str]]:
        spec = join_spec(Counters(["j"]), "window", window=windows.session(seconds=gap))
        logic = JoinLogic(spec, None)
        out = feed(logic, 0, [("hot", ts, rid) for rid, ts in lefts])  # the left side first
        for at in range(0, len(rights), 100):
            out += feed(logic, 1, [("hot", ts, rid) for rid, ts in rights[at : at + 100]])
            if resume and at == 300:
                snap = logic.snapshot()
                random.Random(2).shuffle(snap["held"]["hot"])
                logic = JoinLogic(spec, snap)
        end, _ = logic.on_eof()
        return sorted((j.left, j.right) for _, j in out + [x for x in end if x[0] == "r"])

    assert run(False) == expected
    assert run(True) == expected


def test_a_long_joined_session_holds_one_closing_entry_and_closes_when_due() -> None:
    # One key's left records a second apart (gap 5) make one session that
    # grows with every record while the right side holds the watermark back.
    # It holds one closing entry, not one per record, and pairs every left
    # record with the three right ones once the watermark passes its end
    # plus the gap.
    spec = join_spec(Counters(["j"]), "window", window=windows.session(seconds=5))
    logic = JoinLogic(spec, None)
    out = feed(logic, 1, [("hot", 10.0, "r1")])
    for at in range(0, 4000, 100):
        out += feed(logic, 0, [("hot", float(ts), f"l{ts}") for ts in range(at, at + 100)])
        # l0's session's entry, the merge with r1's, r1's own (stale): not one a record.
        assert len(logic.heap) <= 3
    out += feed(logic, 1, [("hot", 500.0, "r2"), ("hot", 3999.0, "r3")])
    assert out == []
    out += feed(logic, 1, [("other", 4008.0, "x")])
    out += feed(logic, 0, [("other", 4008.0, "y")])
    assert out == []  # the watermark (4008) has not passed 3999 + 5 + 5
    out += feed(logic, 0, [("other", 4009.0, "z")])
    out += feed(logic, 1, [("other", 4009.0, "w")])
    pairs = sorted((j.left, j.right) for _, j in out if j.key == "hot")
    assert pairs == sorted((f"l{ts}", r) for ts in range(4000) for r in ("r1", "r2", "r3"))


@pytest.mark.parametrize("kind", ["table", "interval", "window"])
def test_a_join_halted_and_resumed_on_other_worker_counts_writes_what_one_run_writes(
    tmp_path: Path, kind: str
) -> None:
    # Held records, table rows with their ttl and the watermarks of both sides
    # are in the snapshots whatever the worker count: halted four times and
    # resumed on 1, then 2 workers, the join writes what one whole run writes.
    rng = random.Random(13)
    orders = [
        Order(customer=f"c{rng.randrange(100)}", amount=i, time=at(i / 10 + rng.random()))
        for i in range(15_000)
    ]
    customers = [
        Customer(
            customer=f"c{rng.randrange(100)}", tier=rng.choice("abc"), time=at(i + rng.random())
        )
        for i in range(1_500)
    ]
    halt = Halts()

    def pipeline(out: str) -> Pipeline:
        p = Pipeline("joined")
        read = sources.memory(orders, batch_size=50, partitions=2)
        left = p.read(read, name="orders").map(halt, on_error="halt").key_by(lambda o: o.customer)
        right = p.read(sources.memory(customers, batch_size=20), name="customers").key_by(
            lambda c: c.customer, name="by_customer"
        )
        if kind == "table":
            joined = left.join(
                right.as_table(ttl=120),
                select=lambda o, c: {"o": o.id, "tier": None if c is None else c.tier},
            )
        elif kind == "interval":
            joined = left.join(right, between=(-5, 5), select=lambda o, c: {"o": o.id, "c": c.id})
        else:
            joined = left.join(
                right, window=windows.tumbling(seconds=30), how="left",
                select=lambda o, c: {"o": o.id, "c": None if c is None else c.id},
            )  # fmt: skip
        return joined.write(sinks.jsonl(tmp_path / out))

    pipeline("whole.jsonl").run()
    halt.ids.update(orders[i].id for i in (2_000, 6_000, 9_000, 12_000))
    runs, result = resumed_until_done(pipeline("halted.jsonl"), tmp_path / "store")
    assert runs == 5 and result.reconciles
    whole = sorted_lines(tmp_path / "whole.jsonl")
    assert len(whole) > 500 and sorted_lines(tmp_path / "halted.jsonl") == whole
