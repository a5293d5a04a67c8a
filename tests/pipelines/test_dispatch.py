"""dispatch: handlers by type, results flowing on, failures, keys, async, exhaustiveness."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Literal

import pytest

from operators import Event
from pipelines import (
    EventBus,
    Pipeline,
    PipelineHalted,
    retry,
    sinks,
    sources,
    stateful,
    testing,
)
from tests.helpers import Halts, Purchase, View, multiset, resumed_until_done


class Refund(Event):
    type: Literal["refund"] = "refund"
    user: str
    amount: float


class BigPurchase(Purchase):
    type: Literal["big_purchase"] = "big_purchase"  # type: ignore[assignment]


def test_by_exact_class_base_class_and_type_name() -> None:
    events = [
        Purchase(user="a", amount=1),
        BigPurchase(user="b", amount=900),
        Refund(user="c", amount=2),
        View(user="d"),
    ]
    s = Pipeline("d").read(sources.memory(events))
    handled = s.dispatch(
        {
            Purchase: lambda e: f"purchase {e.user}",  # BigPurchase resolves here too
            "refund": [lambda e: f"audit {e.user}", lambda e: f"notify {e.user}"],
            View: lambda e: None,  # handled, nothing flows on
        }
    )
    r = handled.write(sinks.memory("o")).run()
    assert sorted(r["o"]) == ["audit c", "notify c", "purchase a", "purchase b"]
    step = r.counts["dispatch"]
    assert (step.received, step.out, step.created, step.handled) == (4, 4, 1, 1)
    assert r.reconciles


class Auditor:
    """A handler object: its handle() is called."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle(self, event: Any) -> list[Any]:
        self.seen.append(event.user)
        return [event.user, event.amount]  # a list: two values flow on


def test_handler_objects_iterables_tuples_and_default() -> None:
    auditor = Auditor()
    events = [Refund(user="a", amount=3), View(user="v"), Purchase(user="p", amount=1)]
    s = Pipeline("d").read(sources.memory(events))
    r = (
        s.dispatch(
            {Refund: auditor, Purchase: lambda e: (e.user, e.amount)},
            default=lambda e: iter(["default", e.type]),
        )
        .write(sinks.memory("o"))
        .run()
    )
    assert auditor.seen == ["a"]
    assert sorted(map(str, r["o"])) == sorted(["a", "3.0", "('p', 1.0)", "default", "view"])
    assert r.reconciles


def test_unhandled_events_become_dead_letters() -> None:
    s = Pipeline("d").read(sources.memory([Purchase(user="a", amount=1), View(user="b")]))
    r = s.dispatch({Purchase: lambda e: e}, default="dead_letter").write(sinks.memory("o")).run()
    [dead] = r.dead_letters
    assert dead.kind == "unhandled" and dead.message == "no handler for View"
    assert r.reconciles and len(r["o"]) == 1


class Named:
    """A plain record whose type name is asked of it, and may fail."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def get_type(self) -> str:
        if self.name is None:
            raise LookupError("this record has no type")
        return self.name


@pytest.mark.parametrize("workers", [1, 2])
def test_a_get_type_that_raises_follows_the_policy_and_stops_nothing(workers: int) -> None:
    records = [Named("a"), Named(None), Named("b"), Named(None), Named("a")]

    def run(policy: Any, handler: Any = len) -> Any:
        return (
            Pipeline("d")
            .read(sources.memory(records, partitions=2))
            .dispatch({"a": lambda r: r.name}, default=handler, on_error=policy)
            .write(sinks.memory("o"))
            .run(workers=workers)
        )

    r = run("dead_letter", "dead_letter")
    assert sorted(r["o"]) == ["a", "a"] and r.reconciles
    assert sorted(d.kind for d in r.dead_letters) == ["unhandled", "user_error", "user_error"]
    failed = [d for d in r.dead_letters if d.kind == "user_error"]
    assert all(d.error_type == "LookupError" and "get_type" in str(d.function) for d in failed)
    assert [d.message for d in r.dead_letters if d.kind == "unhandled"] == [
        "no handler for Named (type name 'b')"
    ]
    skipped = run("skip", lambda r: "other")
    assert sorted(skipped["o"]) == ["a", "a", "other"] and skipped.reconciles
    assert skipped.skipped == 2 and not skipped.dead_letters
    with pytest.raises(PipelineHalted):
        run("halt")


def test_exhaustiveness_is_checked_when_the_step_is_added() -> None:
    s = Pipeline("d").read(sources.memory([], schema=Purchase | Refund | View))
    with pytest.raises(
        ValueError,
        match=r"step 'dispatch' \(dispatch\): no handler for Refund, "
        r"View, which stream 'read_memory' carries\. Hint: "
        r"register a handler for each, or make it explicit "
        r"with default='dead_letter'",
    ):
        s.dispatch({Purchase: print})
    s.dispatch({Purchase: print}, default="dead_letter")  # explicit: fine
    s.dispatch({Purchase: print, "refund": print, View: print})  # covered by name and class
    s.dispatch({Event: print})  # a base class covers everything


def test_a_handler_no_event_of_the_stream_can_reach_is_refused_when_the_step_is_added() -> None:
    """A misspelt type name, or a class the stream never carries.

    Its handler was never called, and the events meant for it went to the default.
    """
    s = Pipeline("d").read(sources.memory([], schema=Purchase | View))
    with pytest.raises(
        ValueError,
        match=r"step 'dispatch' \(dispatch\): the handler for 'purchse' would never be called: "
        r"stream 'read_memory' carries Purchase \('purchase'\), View \('view'\), never "
        r"'purchse'\. Hint: did you mean 'purchase'\? key each handler by one of",
    ):
        s.dispatch({"purchse": print}, default="dead_letter")
    with pytest.raises(ValueError, match=r"the handler for Refund would never be called: .*"):
        s.dispatch({Purchase: print, View: print, Refund: print})
    with pytest.raises(ValueError, match=r"the handler for BigPurchase would never be called"):
        s.dispatch({BigPurchase: print}, default="dead_letter")
    # a base class, a carried type name, and a stream whose classes are not known are taken
    s.dispatch({Event: print, "view": print})
    Pipeline("d").read(sources.memory([])).dispatch({"anything": print, Refund: print})
    # the classic bus's registrations may hold more than one source carries
    bus = EventBus()
    bus.register(Refund, print)
    bus.register(Purchase, print)
    bus.pipeline(sources.memory([], schema=Purchase))


def test_misuse_is_caught_when_the_step_is_added() -> None:
    s = Pipeline("d").read(sources.memory([]))
    with pytest.raises(
        TypeError,
        match=r"handler for Purchase must be a function or an object "
        r"with handle\(event\); got int 3",
    ):
        s.dispatch({Purchase: 3})
    with pytest.raises(TypeError, match=r"handlers must be a non-empty mapping"):
        s.dispatch({})
    with pytest.raises(TypeError, match=r"3 is neither an event class nor a type name"):
        s.dispatch({3: print})  # type: ignore[dict-item]
    with pytest.raises(
        TypeError,
        match=r"stateful handlers keep one state per key, so they need "
        r"a keyed stream",
    ):
        s.dispatch({Purchase: stateful(lambda st, e: (st, e))})
    with pytest.raises(ValueError, match=r"concurrency must be a positive int; got 0"):
        s.dispatch({Purchase: print}, concurrency=0)
    with pytest.raises(TypeError, match=r"stateful\(fn, initial=...\) needs callables"):
        stateful(3)  # type: ignore[arg-type]


POISON = 31_337


def picky(e: Purchase) -> float:
    if e.amount == POISON:
        raise ValueError("cannot price this one")
    return e.amount


def test_a_poison_event_among_100_000_is_a_dead_letter_after_retries() -> None:
    events = [Purchase(user=f"u{i % 50}", amount=i, id=f"p{i}") for i in range(100_000)]
    s = Pipeline("poison").read(sources.memory(events, partitions=2))
    for keyed in (False, True):
        stream = s.key_by(lambda e: e.user) if keyed else s
        r = (
            stream.dispatch({Purchase: picky}, on_error=retry(3, backoff=0.001))
            .write(sinks.memory("o"))
            .run(workers=2)
        )
        [dead] = r.dead_letters
        assert dead.attempts == 3 and dead.message == "cannot price this one"
        assert dead.function is not None and "picky" in dead.function
        assert len(r["o"]) == 99_999 and r.reconciles


def test_a_key_that_always_fails_does_not_block_others() -> None:
    events = [Purchase(user="bad" if i % 10 == 0 else f"u{i % 7}", amount=i) for i in range(500)]

    def fussy(e: Purchase) -> str:
        if e.user == "bad":
            raise RuntimeError("bad user")
        return e.user

    r = (
        Pipeline("k")
        .read(sources.memory(events, batch_size=20))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: fussy})
        .write(sinks.memory("o"))
        .run(workers=2)
    )
    assert len(r["o"]) == 450 and r.dead == 50 and r.reconciles


def test_halt_in_a_keyed_dispatch_stops_with_the_users_error() -> None:
    def stop(e: Purchase) -> None:
        raise KeyError("no route for " + e.user)

    p = (
        Pipeline("h")
        .read(sources.memory([Purchase(user="a", amount=1)]))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: stop}, on_error="halt")
        .write(sinks.memory("o"))
    )
    with pytest.raises(PipelineHalted, match=r"halted at step 'dispatch'") as info:
        p.run()
    assert isinstance(info.value.__cause__, KeyError)


def order_state(state: dict[str, Any], e: Event) -> tuple[dict[str, Any], Any]:
    state = {**state, "events": state.get("events", 0) + 1, "last": e.type}
    return state, (getattr(e, "user", ""), state["events"], e.type)


def test_keyed_stateful_handlers_and_1_2_4_workers_agree() -> None:
    events = [
        Purchase(user=f"u{i % 13}", amount=i, id=f"e{i}")
        if i % 4
        else Refund(user=f"u{i % 13}", amount=i, id=f"e{i}")
        for i in range(2000)
    ]
    p = (
        Pipeline("s")
        .read(sources.memory(events, batch_size=64))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: stateful(order_state), Refund: stateful(order_state)})
        .write(sinks.memory("o"))
    )
    runs = [p.run(workers=w) for w in (1, 2, 4)]
    assert multiset(runs[0]["o"]) == multiset(runs[1]["o"]) == multiset(runs[2]["o"])
    # one state per key, shared by both handlers: each key's count runs 1..n without gaps
    per_key = Counter(user for user, _, _ in runs[0]["o"])
    for user, n in per_key.items():
        assert sorted(c for u, c, _ in runs[0]["o"] if u == user) == list(range(1, n + 1))
    unkeyed = (
        Pipeline("s")
        .read(sources.memory(events, partitions=3))
        .dispatch({Purchase: lambda e: e.id, Refund: lambda e: e.id})
        .write(sinks.memory("o"))
    )
    outs = [unkeyed.run(workers=w)["o"] for w in (1, 2, 4)]
    assert sorted(outs[0]) == sorted(outs[1]) == sorted(outs[2])


async def slow_echo(e: Purchase) -> tuple[str, float]:
    await asyncio.sleep(0.05 if int(e.amount) % 2 else 0.001)  # later events can finish first
    return (e.user, e.amount)


def test_async_handlers_run_concurrently_and_keep_order() -> None:
    events = [Purchase(user=f"u{i % 3}", amount=i) for i in range(60)]
    p = (
        Pipeline("a")
        .read(sources.memory(events))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: slow_echo}, concurrency=30)
        .write(sinks.memory("o"))
    )
    started = time.perf_counter()
    r = p.run()
    elapsed = time.perf_counter() - started
    assert elapsed < 30 * 0.05  # one after another: 30 slow calls of 50 ms, 1.5 s at least
    for user in ("u0", "u1", "u2"):
        amounts = [a for u, a in r["o"] if u == user]
        assert amounts == sorted(amounts)  # per-key order kept
    assert len(r["o"]) == 60 and r.reconciles


async def flaky_async(e: Purchase) -> float:
    if e.amount == 3:
        raise ConnectionError("service down")
    return e.amount


def test_async_failures_follow_the_policy() -> None:
    events = [Purchase(user="u", amount=i) for i in range(6)]
    r = (
        Pipeline("a")
        .read(sources.memory(events))
        .dispatch({Purchase: flaky_async}, on_error=retry(2, backoff=0))
        .write(sinks.memory("o"))
        .run()
    )
    assert sorted(r["o"]) == [0, 1, 2, 4, 5]
    [dead] = r.dead_letters
    assert dead.attempts == 2 and dead.error_type == "ConnectionError"


def lines_of(e: Purchase) -> Any:
    """A generator handler: one result per unit of the amount; amount 3 fails midway."""
    for i in range(int(e.amount)):
        if e.amount == 3 and i == 2:
            raise ValueError("third line of 3 refused")
        yield (e.user, i)


async def lines_later(e: Purchase) -> Any:
    for i in range(int(e.amount)):
        await asyncio.sleep(0)
        if e.amount == 3 and i == 2:
            raise ValueError("third line of 3 refused")
        yield (e.user, i)


def counted_lines(total: int, e: Purchase) -> tuple[int, Any]:
    return total + 1, (x for x in lines_of(e))  # a lazy result, failing as it is read


@pytest.mark.parametrize("handler", ["generator", "async_generator", "stateful"])
def test_a_handler_whose_results_fail_as_they_are_made_follows_the_policy(
    handler: str,
) -> None:
    # A generator's exception came out of the step itself and stopped the whole run;
    # an async generator's values were never made: the generator object was the result.
    events = [Purchase(user=f"u{i % 2}", amount=i) for i in range(6)]
    handlers = {
        "generator": lines_of,
        "async_generator": lines_later,
        "stateful": stateful(counted_lines, initial=int),
    }
    r = (
        Pipeline("lines")
        .read(sources.memory(events, batch_size=2))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: handlers[handler]}, on_error=retry(2, backoff=0))
        .write(sinks.memory("o"))
        .run()
    )
    # The event of amount 3 is one dead letter, retried: none of its lines went on.
    assert sorted(r["o"]) == sorted(
        (e.user, i) for e in events if e.amount != 3 for i in range(int(e.amount))
    )
    [dead] = r.dead_letters
    assert (dead.error_type, dead.attempts) == ("ValueError", 2)
    assert dead.message == "third line of 3 refused" and r.reconciles


def test_a_stateful_handler_that_returns_no_pair_is_told_what_it_returned() -> None:
    # It read "cannot unpack non-iterable int object", naming neither the handler nor
    # what it should return.
    events = [Purchase(user="u", amount=i) for i in range(3)]
    r = (
        Pipeline("pairs")
        .read(sources.memory(events))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: stateful(count_only, initial=int)})
        .write(sinks.memory("o"))
        .run()
    )
    assert r.dead == 3 and r.reconciles
    assert r.dead_letters[0].message == (
        "stateful handler <tests.pipelines.test_dispatch.count_only line "
        f"{count_only.__code__.co_firstlineno}> returned int 1, not (new state, output). "
        "Hint: return (new_state, output); (new_state, None) hands nothing on."
    )


def count_only(total: int, e: Purchase) -> int:
    return total + 1


def test_dispatch_through_the_test_seam() -> None:
    p = (
        Pipeline("seam")
        .read(sources.memory([], schema=Purchase))
        .dispatch({Purchase: lambda e: e.amount * 2})
        .write(sinks.memory("o"))
    )
    r = testing.run(p, [Purchase(user="a", amount=2)])
    assert r["o"] == [4.0]


def test_async_handlers_run_where_an_event_loop_is_already_running() -> None:
    # A notebook's kernel runs cells inside its event loop: asyncio.run() would refuse.
    events = [Purchase(user="u", amount=i) for i in range(5)]
    p = (
        Pipeline("loop")
        .read(sources.memory(events))
        .dispatch({Purchase: slow_echo}, concurrency=5)
        .dispatch({tuple: echo_pair})
        .write(sinks.memory("o"))
    )

    async def in_a_loop() -> Any:
        return p.run()

    r = asyncio.run(in_a_loop())
    assert sorted(a for _, a in r["o"]) == [0, 1, 2, 3, 4] and r.reconciles


async def echo_pair(pair: tuple[str, float]) -> tuple[str, float]:
    await asyncio.sleep(0)
    return pair


class Review(Event):
    type: Literal["review"] = "review"
    user: str
    amount: float


def test_out_checks_the_results_class_and_dead_letters_the_others() -> None:
    events = [Purchase(user=f"u{i}", amount=i) for i in range(6)] + [Refund(user="r", amount=1)]

    def review(e: Purchase) -> Any:
        # a handler with a bug: odd amounts give a dict instead of a Review
        if int(e.amount) % 2:
            return {"user": e.user}
        return [Review(user=e.user, amount=e.amount), Review(user=e.user, amount=-e.amount)]

    def refund(e: Refund) -> Review:
        return Review(user=e.user, amount=e.amount)

    for keyed in (False, True):
        s = Pipeline("d").read(sources.memory(events))
        if keyed:
            s = s.key_by(lambda e: e.user)
        reviews = s.dispatch(
            {
                Purchase: review,
                Refund: stateful(lambda n, e: (n, refund(e)), initial=int) if keyed else refund,
            },
            out=Review,
        )
        r = reviews.map(lambda v: v.amount).write(sinks.memory("o")).run()
        assert sorted(r["o"]) == [-4.0, -2.0, 0.0, 0.0, 1.0, 2.0, 4.0]
        wrong = [d for d in r.dead_letters]
        assert len(wrong) == 3
        assert {d.payload for d in wrong} == {'{"user": "u1"}', '{"user": "u3"}', '{"user": "u5"}'}
        assert all(d.error_type == "TypeError" and d.step == "dispatch" for d in wrong)
        assert wrong[0].message == "a handler returned dict, not Review (dispatch(..., out=Review))"
        step = r.counts["dispatch"]
        assert (step.received, step.out, step.dead, step.created) == (7, 7, 3, 3)
        assert r.reconciles
    # the results' class is known to later steps: a filter by another class is refused
    with pytest.raises(TypeError, match="carries Review, never Refund"):
        Pipeline("d").read(sources.memory(events)).dispatch(
            {Event: lambda e: None}, out=Review
        ).filter(Refund)
    with pytest.raises(TypeError, match="out must be the class of the handlers' results"):
        Pipeline("d").read(sources.memory(events)).dispatch(
            {Event: lambda e: None},
            out="Review",  # type: ignore[call-overload]
        )


def test_stateful_handler_states_are_exact_across_halts_on_other_worker_counts(
    tmp_path: Any,
) -> None:
    # Each key's count lives in the dispatch step's snapshots: halted four
    # times and resumed on 1, then 2 workers, each key counts 1 to its number
    # of events, each once.
    import json
    import random

    rng = random.Random(9)
    views = [View(user=f"u{rng.randrange(30)}") for _ in range(20_000)]
    halt = Halts(views[i].id for i in (2_500, 7_000, 13_000, 17_000))

    def count(n: int, v: View) -> tuple[int, dict[str, Any]]:
        return n + 1, {"user": v.user, "n": n + 1, "id": v.id}

    counted = (
        Pipeline("counts")
        .read(sources.memory(views, batch_size=50, partitions=2), name="views")
        .map(halt, on_error="halt")
        .key_by(lambda v: v.user)
        .dispatch({View: stateful(count, initial=int)})
        .write(sinks.jsonl(tmp_path / "out.jsonl"))
    )
    runs, result = resumed_until_done(counted, tmp_path / "store")
    assert runs == 5 and result.reconciles
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows) == 20_000
    per_user: dict[str, list[int]] = {}
    for r in rows:
        per_user.setdefault(r["user"], []).append(r["n"])
    assert {u: sorted(ns) for u, ns in per_user.items()} == {
        u: list(range(1, n + 1)) for u, n in Counter(v.user for v in views).items()
    }


EMPTY: dict[str, list[str]] = {"ids": []}


def remember(state: dict[str, list[str]], e: Purchase) -> tuple[dict[str, list[str]], Any]:
    state["ids"].append(e.id)  # in place, as a careless handler does
    return state, (e.user, len(state["ids"]))


def test_an_initial_state_made_once_is_each_keys_own_copy() -> None:
    """``initial=lambda: EMPTY`` gives each key a copy: no key sees another's events."""
    events = [Purchase(user=f"u{i % 3}", amount=i, id=f"e{i}") for i in range(30)]
    p = (
        Pipeline("s")
        .read(sources.memory(events, batch_size=4))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: stateful(remember, initial=lambda: EMPTY)})
        .write(sinks.memory("o"))
    )
    expected = sorted((f"u{u}", n) for u in range(3) for n in range(1, 11))
    for workers in (1, 2):
        assert sorted(p.run(workers=workers)["o"]) == expected
    assert EMPTY == {"ids": []}


@pytest.mark.parametrize("after", ["window", "window_all", "join", "process"])
def test_a_step_on_event_time_after_a_keyed_dispatch_is_refused(after: str) -> None:
    # A window after a keyed dispatch closed only when the input ended (never on a
    # live input) and judged lateness one way on one process, another on two.
    from datetime import timedelta

    from operators import agg, windows

    clock = windows.event_time("time", max_delay=timedelta(seconds=1))
    p = Pipeline("bus")
    handled = (
        p.read(sources.memory([Purchase(user="a", amount=1)]))
        .key_by(lambda e: e.user)
        .dispatch({Purchase: stateful(lambda n, e: (n + 1, e), initial=int)}, name="counted")
        .map(lambda e: e, name="again")
    )
    keyed = handled.key_by(lambda e: e.user, name="rekeyed")
    other = p.read(sources.memory([View(user="a")]), name="views").key_by(
        lambda e: e.user, name="by_user"
    )
    adds = {
        "window": lambda: keyed.window(windows.tumbling(seconds=10), clock=clock).aggregate(
            n=agg.count(), name="per_10s"
        ),
        "window_all": lambda: handled.window_all(
            windows.tumbling(seconds=10), clock=clock, name="all"
        ).aggregate(n=agg.count(), name="per_10s"),
        "join": lambda: keyed.join(
            other, window=windows.tumbling(seconds=10), clock=clock, name="paired"
        ),
        "process": lambda: keyed.process(lambda s, e, ctx: s, initial=int, clock=clock, name="t"),
    }
    step = {"window": "aggregate 'per_10s'", "window_all": "aggregate 'per_10s'"}.get(
        after, "join 'paired'" if after == "join" else "process 't'"
    )
    with pytest.raises(
        ValueError,
        match=rf"{step} comes after 'counted' \(dispatch, keyed\), whose results carry no "
        r"watermark \(running aggregates, count windows, processing-time windows and keyed "
        r"dispatches\), so a step on event time cannot follow it: it could not tell when its "
        r"windows close \(on a live input, never\) nor what is late\. Hint: put the event-time "
        r"step before it, or keep the per-key state in a process step on event time instead",
    ):
        adds[after]()


def test_processing_time_and_an_unkeyed_dispatch_still_go_before_a_window() -> None:
    from datetime import datetime, timedelta, timezone

    from operators import agg, windows

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    buys = [Purchase(user="a", amount=n, time=t0 + timedelta(seconds=n)) for n in range(30)]
    s = Pipeline("bus").read(sources.memory(buys))
    wall = (
        s.key_by(lambda e: e.user)
        .dispatch({Purchase: stateful(lambda n, e: (n + 1, e), initial=int)})
        .key_by(lambda e: e.user, name="again")
        .window(windows.tumbling(seconds=60), clock=windows.processing_time())
        .aggregate(n=agg.count())
    )
    assert sum(r.n for r in wall.write(sinks.memory("o")).run()["o"]) == 30
    unkeyed = (
        s.dispatch({Purchase: lambda e: e})
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10), clock=windows.event_time("time"))
        .aggregate(n=agg.count())
    )
    assert [r.n for r in unkeyed.write(sinks.memory("o")).run()["o"]] == [10, 10, 10]
