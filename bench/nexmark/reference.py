"""NEXMark Q0 to Q8 as plain Python loops over the events: the reference all must agree with."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from model import T0, Auction, Bid, Person

BASE = T0.timestamp()


def ms(t: Any) -> int:
    """Milliseconds since T0 (event times are whole milliseconds)."""
    return round((t.timestamp() - BASE) * 1000)


def q0(events: list[Any]) -> Any:
    return len(events)


def q1(events: list[Any]) -> Any:
    out = [(e.auction, e.bidder, e.price * 908 // 1000) for e in events if type(e) is Bid]
    return len(out), sum(x[2] for x in out)


def q2(events: list[Any]) -> Any:
    out = [(e.auction, e.price) for e in events if type(e) is Bid and e.auction % 123 == 0]
    return len(out), sum(x[1] for x in out)


def q3(events: list[Any]) -> Any:
    persons: dict[int, Person] = {}
    out = []
    for e in events:
        if type(e) is Person and e.state in ("OR", "ID", "CA"):
            persons[e.person] = e
        elif type(e) is Auction and e.category == 10:
            p = persons.get(e.seller)
            if p is not None:
                out.append((p.name, p.city, p.state, e.auction))
    return sorted(out)


def winners(events: list[Any]) -> list[tuple[int, int, int, int]]:
    """Each auction's winning bid, in order of closing: (expires ms, category, seller, price)."""
    open_: dict[int, list[Any]] = {}
    for e in events:
        if type(e) is Auction:
            open_[e.auction] = [e, None]
        elif type(e) is Bid:
            slot = open_.get(e.auction)
            if slot is None:
                continue
            a = slot[0]
            if (
                e.time <= a.expires
                and e.price >= a.reserve
                and (slot[1] is None or e.price > slot[1])
            ):
                slot[1] = e.price
    done = [
        (ms(a.expires), a.category, a.seller, best)
        for a, best in open_.values()
        if best is not None
    ]
    done.sort()
    return done


def q4(events: list[Any]) -> Any:
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for _, category, _, price in winners(events):
        sums[category][0] += price
        sums[category][1] += 1
    return {c: round(s / n, 6) for c, (s, n) in sums.items()}


def q5(events: list[Any]) -> Any:
    counts: dict[tuple[int, int], int] = defaultdict(int)  # (window start, auction)
    for e in events:
        if type(e) is Bid:
            t = ms(e.time)
            start = t // 2000 * 2000
            while start > t - 10_000:
                counts[(start, e.auction)] += 1
                start -= 2000
    top: dict[int, int] = {}
    for (start, _), n in counts.items():
        end = start + 10_000
        if n > top.get(end, 0):
            top[end] = n
    return top


def q6(events: list[Any]) -> Any:
    last: dict[int, list[int]] = defaultdict(list)
    for _, _, seller, price in winners(events):
        prices = last[seller]
        prices.append(price)
        del prices[:-10]
    return {s: round(sum(p) / len(p), 6) for s, p in last.items()}


def q7(events: list[Any]) -> Any:
    top: dict[int, int] = {}
    for e in events:
        if type(e) is Bid:
            start = ms(e.time) // 10_000 * 10_000
            if e.price > top.get(start, 0):
                top[start] = e.price
    return top


def q8(events: list[Any]) -> Any:
    joined: dict[int, int] = {}
    out = set()
    for e in events:
        if type(e) is Person:
            joined[e.person] = ms(e.time) // 10_000
        elif type(e) is Auction and joined.get(e.seller) == ms(e.time) // 10_000:
            out.add((e.seller, ms(e.time) // 10_000 * 10_000))
    return sorted(out)


QUERIES = {f"q{i}": globals()[f"q{i}"] for i in range(9)}
