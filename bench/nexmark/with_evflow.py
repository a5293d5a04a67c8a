"""NEXMark Q0 to Q8 in evflow: streaming queries on event time (timers, joins, windows)."""

from __future__ import annotations

from typing import Any

from model import Auction, Bid, Person
from reference import ms

from operators import Context, Event, Timer, agg, windows
from pipelines import Pipeline, Stream, sinks, sources


class Winner(Event):
    category: int
    seller: int
    price: int


def read(events: list[Any], name: str) -> Stream[Any]:
    return Pipeline(name).read(sources.memory(events, batch_size=1000), name="events")


def run(stream: Stream[Any]) -> list[Any]:
    result = stream.write(sinks.memory("out")).run()
    assert result.reconciles and not result.dead_letters, result.dead_letters[:3]
    return result["out"]


def q0(events: list[Any]) -> Any:
    return len(run(read(events, "q0")))


def q1(events: list[Any]) -> Any:
    out = run(
        read(events, "q1").filter(Bid).map(lambda e: (e.auction, e.bidder, e.price * 908 // 1000))
    )
    return len(out), sum(x[2] for x in out)


def q2(events: list[Any]) -> Any:
    out = run(
        read(events, "q2")
        .filter(Bid)
        .filter(lambda e: e.auction % 123 == 0)
        .map(lambda e: (e.auction, e.price))
    )
    return len(out), sum(x[1] for x in out)


def q3(events: list[Any]) -> Any:
    s = read(events, "q3")
    persons = (
        s.filter(Person)
        .filter(lambda p: p.state in ("OR", "ID", "CA"), name="in_states")
        .key_by(lambda p: str(p.person))
    )
    auctions = (
        s.filter(Auction)
        .filter(lambda a: a.category == 10, name="category_10")
        .key_by(lambda a: str(a.seller), name="seller")
    )
    joined = auctions.join(
        persons.as_table(),
        select=lambda a, p: None if p is None else (p.name, p.city, p.state, a.auction),
    )
    return sorted(run(joined.filter(lambda x: x is not None, name="matched")))


def best_bid(state: list[Any], e: Auction | Bid, ctx: Context[Winner]) -> list[Any] | None:
    """An auction's state: ``[auction, best price so far]`` (as the bytewax version keeps it)."""
    if type(e) is Auction:
        ctx.timer(e.expires)  # the auction closes at its expiry
        return [e, None]
    if not state:
        return None  # a bid for a closed auction
    a, best = state
    if e.time <= a.expires and e.price >= a.reserve and (best is None or e.price > best):
        state[1] = e.price
    return state


def close(state: list[Any], timer: Timer, ctx: Context[Winner]) -> None:
    a, best = state
    if best is not None:
        ctx.emit(Winner(id=a.id, time=ctx.time, category=a.category, seller=a.seller, price=best))


def winners(events: list[Any], name: str) -> Stream[Winner]:
    bids_and_auctions = read(events, name).filter(
        lambda e: type(e) is not Person, name="auctions_and_bids"
    )
    return bids_and_auctions.key_by(lambda e: str(e.auction)).process(
        best_bid, initial=list, on_timer=close
    )


def running_mean(
    acc: tuple[int, int], w: Winner, ctx: Context[tuple[int, int, float]]
) -> tuple[int, int]:
    """A category's mean winning price so far, emitted as each of its auctions closes."""
    total, n = acc[0] + w.price, acc[1] + 1
    ctx.emit((w.category, ms(ctx.time), round(total / n, 6)))
    return total, n


def latest(rows: list[tuple[int, int, float]]) -> dict[int, float]:
    """The last value emitted for each key: ``(key, at, value)`` rows."""
    final: dict[int, tuple[int, float]] = {}
    for key, at, value in rows:
        if at >= final.get(key, (-1, 0.0))[0]:
            final[key] = (at, value)
    return {key: value for key, (_, value) in final.items()}


def q4(events: list[Any]) -> Any:
    means = (
        winners(events, "q4")
        .key_by(lambda w: str(w.category), name="category")
        .process(running_mean, initial=lambda: (0, 0))
    )
    return latest(run(means))


def q5(events: list[Any]) -> Any:
    """The most bid-on auction's bid count in each sliding window: a top_k of the window."""
    hottest = (
        read(events, "q5")
        .filter(Bid)
        .window_all(windows.sliding(seconds=10, every=2))
        .aggregate(top=agg.top_k("auction", 1))
    )
    return {ms(r.end): r.top[0][1] for r in run(hottest)}


def q5_in_two_steps(events: list[Any]) -> Any:
    """Q5 as the bytewax version does it: bids per auction and window, then the most per window.

    A window over window results (tumbling over the sliding windows' ends).
    """
    counts = (
        read(events, "q5")
        .filter(Bid)
        .key_by(lambda b: str(b.auction))
        .window(windows.sliding(seconds=10, every=2))
        .aggregate(n=agg.count())
    )
    hottest = counts.window_all(windows.tumbling(seconds=2), name="all").aggregate(
        top=agg.max("n"), name="top"
    )
    return {ms(r.end): r.top for r in run(hottest)}


def last_ten(prices: list[int], w: Winner, ctx: Context[tuple[int, float]]) -> list[int]:
    prices = [*prices[-9:], w.price]
    ctx.emit((w.seller, ms(ctx.time), round(sum(prices) / len(prices), 6)))
    return prices


def q6(events: list[Any]) -> Any:
    averages = (
        winners(events, "q6")
        .key_by(lambda w: str(w.seller), name="seller")
        .process(last_ten, initial=list)
    )
    return latest(run(averages))


def q7(events: list[Any]) -> Any:
    highest = (
        read(events, "q7")
        .filter(Bid)
        .window_all(windows.tumbling(seconds=10))
        .aggregate(top=agg.max("price"))
    )
    return {ms(r.start): r.top for r in run(highest)}


def q8(events: list[Any]) -> Any:
    s = read(events, "q8")
    persons = s.filter(Person).key_by(lambda p: str(p.person))
    auctions = s.filter(Auction).key_by(lambda a: str(a.seller), name="seller")
    joined = persons.join(auctions, window=windows.tumbling(seconds=10))
    return sorted({(j.left.person, ms(j.start)) for j in run(joined)})


QUERIES = {f"q{i}": globals()[f"q{i}"] for i in range(9)}
#: Other ways to write a query, reported beside it: ``name -> (query, function)``.
VARIANTS = {"q5 in two steps": ("q5", q5_in_two_steps)}
