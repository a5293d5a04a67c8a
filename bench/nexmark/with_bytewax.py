"""NEXMark Q0 to Q8 in hand-written bytewax 0.21 (one operator per operation, 1 worker)."""

from __future__ import annotations

import heapq
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.dataflow import Stream as BwStream
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main
from model import T0, Auction, Bid, Person
from reference import ms


def source(events: list[Any], name: str) -> tuple[Dataflow, BwStream[Any]]:
    flow = Dataflow(name)
    return flow, op.input("events", flow, TestingSource(events, 1000))


def collect(flow: Dataflow, stream: BwStream[Any]) -> list[Any]:
    out: list[Any] = []
    op.output("out", stream, TestingSink(out))
    run_main(flow)
    return out


def clock() -> win.EventClock[Any]:
    # Replayed timestamps: no system-time wake-ups. bytewax's watermark moves on
    # with the system time elapsed since the newest event: with no wait a busy
    # run calls on-time events late (and gives other results), so it waits.
    return win.EventClock(
        lambda e: e.time,
        wait_for_system_duration=timedelta(seconds=60),
        to_system_utc=lambda t: None,
    )


def q0(events: list[Any]) -> Any:
    flow, s = source(events, "q0")
    return len(collect(flow, s))


def q1(events: list[Any]) -> Any:
    flow, s = source(events, "q1")
    bids = op.filter("bids", s, lambda e: type(e) is Bid)
    out = collect(
        flow, op.map("euro", bids, lambda e: (e.auction, e.bidder, e.price * 908 // 1000))
    )
    return len(out), sum(x[2] for x in out)


def q2(events: list[Any]) -> Any:
    flow, s = source(events, "q2")
    bids = op.filter("bids", s, lambda e: type(e) is Bid and e.auction % 123 == 0)
    out = collect(flow, op.map("pick", bids, lambda e: (e.auction, e.price)))
    return len(out), sum(x[1] for x in out)


def q3(events: list[Any]) -> Any:
    flow, s = source(events, "q3")
    wanted = op.filter(
        "wanted",
        s,
        lambda e: (
            (type(e) is Person and e.state in ("OR", "ID", "CA"))
            or (type(e) is Auction and e.category == 10)
        ),
    )
    keyed = op.key_on(
        "by_person", wanted, lambda e: str(e.person if type(e) is Person else e.seller)
    )

    def match(person: Any, e: Any) -> tuple[Any, Any]:
        if type(e) is Person:
            return e, None
        return person, None if person is None else (
            person.name,
            person.city,
            person.state,
            e.auction,
        )

    matched = op.filter_map("matched", op.stateful_map("join", keyed, match), lambda kv: kv[1])
    return sorted(collect(flow, matched))


class _Auctions(StatefulBatchLogic[Any, Any, Any]):
    """All open auctions; each closes (its winner emitted) once event time passes its expiry."""

    def __init__(self) -> None:
        self.open: dict[int, list[Any]] = {}
        self.heap: list[tuple[Any, int]] = []

    def _close(self, upto: Any, out: list[Any]) -> None:
        while self.heap and (upto is None or self.heap[0][0] < upto):
            _, aid = heapq.heappop(self.heap)
            a, best = self.open.pop(aid)
            if best is not None:
                out.append((ms(a.expires), a.category, a.seller, best))

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        for e in values:
            self._close(e.time, out)
            if type(e) is Auction:
                self.open[e.auction] = [e, None]
                heapq.heappush(self.heap, (e.expires, e.auction))
                continue
            slot = self.open.get(e.auction)
            if slot is None:
                continue
            a = slot[0]
            if (
                e.time <= a.expires
                and e.price >= a.reserve
                and (slot[1] is None or e.price > slot[1])
            ):
                slot[1] = e.price
        return out, False

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self._close(None, out)
        return out, True

    def snapshot(self) -> Any:
        return (self.open, self.heap)


def winners(events: list[Any], name: str) -> tuple[Dataflow, BwStream[Any]]:
    flow, s = source(events, name)
    keyed = op.key_on(
        "all", op.filter("no_persons", s, lambda e: type(e) is not Person), lambda e: "all"
    )
    closed = op.stateful_batch("auctions", keyed, lambda resume: _Auctions())
    return flow, op.key_rm("unkey", closed)


def q4(events: list[Any]) -> Any:
    flow, done = winners(events, "q4")
    by_category = op.key_on("category", done, lambda w: str(w[1]))

    def mean(acc: Any, w: Any) -> tuple[Any, Any]:
        acc = (0, 0) if acc is None else acc
        acc = (acc[0] + w[3], acc[1] + 1)
        return acc, acc

    running = op.stateful_map("mean", by_category, mean)
    final: dict[int, float] = {}
    for key, (total, n) in collect(flow, running):
        final[int(key)] = round(total / n, 6)
    return final


def q5(events: list[Any]) -> Any:
    flow, s = source(events, "q5")
    bids = op.filter("bids", s, lambda e: type(e) is Bid)
    windower = win.SlidingWindower(
        length=timedelta(seconds=10), offset=timedelta(seconds=2), align_to=T0
    )
    counts = win.count_window("counts", bids, clock(), windower, lambda b: str(b.auction))
    per_window = op.key_on("window", op.key_rm("unkey", counts.down), lambda wc: str(wc[0]))
    top = op.reduce_final("top", per_window, lambda a, b: a if a[1] >= b[1] else b)
    return {int(key) * 2000 + 10_000: n for key, (_, n) in collect(flow, top)}


def q6(events: list[Any]) -> Any:
    flow, done = winners(events, "q6")
    by_seller = op.key_on("seller", done, lambda w: str(w[2]))

    def last_ten(prices: Any, w: Any) -> tuple[Any, Any]:
        prices = [*(prices or [])[-9:], w[3]]
        return prices, round(sum(prices) / len(prices), 6)

    final = {}
    for key, avg in collect(flow, op.stateful_map("last_ten", by_seller, last_ten)):
        final[int(key)] = avg
    return final


def q7(events: list[Any]) -> Any:
    flow, s = source(events, "q7")
    bids = op.key_on("all", op.filter("bids", s, lambda e: type(e) is Bid), lambda e: "all")
    windower = win.TumblingWindower(length=timedelta(seconds=10), align_to=T0)
    top = win.max_window("top", bids, clock(), windower, by=lambda b: b.price)
    return {window_id * 10_000: bid.price for _, (window_id, bid) in collect(flow, top.down)}


def q8(events: list[Any]) -> Any:
    flow, s = source(events, "q8")
    persons = op.key_on(
        "persons", op.filter("p", s, lambda e: type(e) is Person), lambda p: str(p.person)
    )
    auctions = op.key_on(
        "auctions", op.filter("a", s, lambda e: type(e) is Auction), lambda a: str(a.seller)
    )
    windower = win.TumblingWindower(length=timedelta(seconds=10), align_to=T0)
    joined = win.join_window("join", clock(), windower, persons, auctions, insert_mode="product")
    rows = collect(flow, joined.down)
    return sorted({(int(key), window_id * 10_000) for key, (window_id, (p, a)) in rows if p and a})


QUERIES = {f"q{i}": globals()[f"q{i}"] for i in range(9)}
