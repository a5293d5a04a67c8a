"""Keyed process steps: state, timers in event-time order, ttl, end of input, crashes."""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators import COUNTER_FIELDS, Context, Counters, Event, Timer, agg, windows
from operators._keying import Marked
from operators._process import ProcessLogic, ProcessSpec
from pipelines import Pipeline, sinks, sources
from tests.helpers import Halts, kill_at_random, resumed_until_done, sorted_lines
from tests.reference import partition_marks

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
BASE = T0.timestamp()


class Tick(Event):
    k: str
    v: int


def on_event(state: dict[str, int], e: Tick, ctx: Context[tuple[Any, ...]]) -> dict[str, int]:
    """Sum per key; a ``tick`` timer at the next multiple of 10 s, an ``idle`` one 7 s on.

    Some events move ``idle`` back to 2 s on, or set ``tick`` and cancel it
    (the changes of one call take effect in their order).
    """
    ts = e.time.timestamp() - BASE
    state = {"sum": state.get("sum", 0) + e.v, "n": state.get("n", 0) + 1}
    ctx.timer(BASE + (ts // 10 + 1) * 10, "tick")
    ctx.timer(BASE + ts + 7, "idle")
    if e.v % 4 == 0:
        ctx.timer(BASE + ts + 2, "idle")
    if e.v % 5 == 0:
        ctx.timer(BASE + ts + 3, "tick")
        ctx.cancel("tick")
    return state


def on_timer(
    state: dict[str, int], timer: Timer, ctx: Context[tuple[Any, ...]]
) -> dict[str, int] | None:
    at = round(timer.time.timestamp() - BASE, 6)
    if timer.name == "tick":
        ctx.emit((timer.key, "tick", at, state.get("sum", 0)))
        return state
    ctx.emit((timer.key, "idle", at, state.get("n", 0)))
    return None


def reference(
    events: list[tuple[str, float, int]], ttl: float | None
) -> tuple[Counter[tuple[Any, ...]], int]:
    """Per key, in time order: the same handlers, with no engine. Returns outputs, expiries."""
    out: Counter[tuple[Any, ...]] = Counter()
    expired = 0
    by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for k, ts, v in events:
        by_key[k].append((ts, v))
    for k, items in by_key.items():
        # (time, kind: 0 event, 1 timer, 2 ttl, seq, payload)
        queue: list[tuple[float, int, int, Any]] = []
        seq = 0
        for ts, v in items:
            seq += 1
            heapq.heappush(queue, (ts, 0, seq, v))
        state: dict[str, int] | None = None
        timers: dict[str, tuple[float, int]] = {}
        last = -math.inf
        while queue:
            at, kind, s, payload = heapq.heappop(queue)
            if kind == 0:
                state = state or {}
                state = {"sum": state.get("sum", 0) + payload, "n": state.get("n", 0) + 1}
                changes: list[tuple[str, float | None]] = [
                    ("tick", (at // 10 + 1) * 10),
                    ("idle", at + 7),
                ]
                if payload % 4 == 0:
                    changes.append(("idle", at + 2))
                if payload % 5 == 0:
                    changes += [("tick", at + 3), ("tick", None)]
                for name, when in changes:
                    if when is None:
                        timers.pop(name, None)
                        continue
                    seq += 1
                    timers[name] = (when, seq)
                    heapq.heappush(queue, (when, 1, seq, name))
                if ttl is not None:
                    last = at
                    seq += 1
                    heapq.heappush(queue, (at + ttl, 2, seq, at))
            elif kind == 1:
                if timers.get(payload) != (at, s):
                    continue
                del timers[payload]
                current = state or {}
                if payload == "tick":
                    out[(k, "tick", round(at, 6), current.get("sum", 0))] += 1
                    if state is None and ttl is not None:
                        # A state the timer makes anew has its ttl from the timer's time.
                        last = at
                        seq += 1
                        heapq.heappush(queue, (at + ttl, 2, seq, at))
                    state = current
                else:
                    out[(k, "idle", round(at, 6), current.get("n", 0))] += 1
                    state = None
            elif payload == last and state is not None:
                state = None
                expired += 1
        if state is not None:
            expired += 1
    return out, expired


def judge(events: list[tuple[str, float, int]], parts: int, delay: float) -> list[bool]:
    """Whether each event is late: behind its own partition's watermark just before it."""
    marks = partition_marks([ts for _, ts, _ in events], parts, delay)
    return [ts < wm for (_, ts, _), (wm, _, _) in zip(events, marks, strict=True)]


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 80))
    base = sorted(draw(st.lists(st.integers(0, 300), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-12, 0), min_size=n, max_size=n))
    stamps = [max(0, b + j) / 4 for b, j in zip(base, jitter, strict=True)]
    keys = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-5, 20), min_size=n, max_size=n))
    return {
        "events": list(zip(keys, stamps, values, strict=True)),
        "parts": draw(st.sampled_from([1, 2, 3])),
        "delay": float(draw(st.sampled_from([0, 1, 3]))),
        "batch": draw(st.sampled_from([1, 4, 50])),
        "workers": draw(st.sampled_from([1, 2, 4])),
        "ttl": draw(st.sampled_from([None, 4.0, 12.0])),
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_process_agrees_with_reference(case: dict[str, Any]) -> None:
    events = case["events"]
    ticks = [
        Tick(k=k, v=v, time=T0 + timedelta(seconds=ts), id=f"e{i}")
        for i, (k, ts, v) in enumerate(events)
    ]
    stream = (
        Pipeline("procprop")
        .read(sources.memory(ticks, partitions=case["parts"], batch_size=case["batch"]))
        .key_by(lambda e: e.k)
        .process(
            on_event,
            initial=dict,
            on_timer=on_timer,
            ttl=case["ttl"],
            clock=windows.event_time(max_delay=case["delay"]),
        )
    )
    flow = stream.write(sinks.memory("out")) | stream.late.write(sinks.memory("late"))
    result = flow.run(workers=case["workers"])
    late = judge(events, case["parts"], case["delay"])
    on_time = [e for e, is_late in zip(events, late, strict=True) if not is_late]
    want, expired = reference(on_time, case["ttl"])
    assert Counter(result["out"]) == want
    assert sorted(e.id for e in result["late"]) == sorted(
        f"e{i}" for i, is_late in enumerate(late) if is_late
    )
    assert result.expired == expired
    assert result.reconciles and result.open_windows == 0


def test_a_timer_in_the_past_is_a_dead_letter_saying_so() -> None:
    def back(state: int, e: Tick, ctx: Context[int]) -> int:
        ctx.timer(ctx.time - timedelta(seconds=1))
        return state

    stream = (
        Pipeline("past")
        .read(sources.memory([Tick(k="a", v=1, time=T0)]))
        .key_by(lambda e: e.k)
        .process(back, initial=int)
    )
    result = stream.write(sinks.memory("out")).run()
    (letter,) = result.dead_letters
    assert letter.kind == "user_error" and letter.error_type == "TimerInThePast"
    assert "before the time being handled" in letter.message and "Hint" in letter.message
    assert result.reconciles


def test_one_instant_in_any_zone_or_in_epoch_seconds_sets_one_time() -> None:
    # A UTC datetime (the usual case, read without asking for an offset), a
    # datetime in another zone and epoch seconds name the same instant: the
    # timers fire together, in the order set, and one of them set again at
    # the same instant in another form stays one timer.
    plus_5 = timezone(timedelta(hours=5, minutes=30))
    named_utc = timezone(timedelta(0), "Z")  # equal to timezone.utc, another object

    def arm(n: int, e: Tick, ctx: Context[tuple[str, float]]) -> int:
        at = ctx.time + timedelta(seconds=2)
        ctx.timer(at, "utc")
        ctx.timer(at.astimezone(plus_5), "plus_5")
        ctx.timer(at.timestamp(), "epoch")
        ctx.timer(at.timestamp() + 1.5, "moved")
        ctx.timer(at.replace(tzinfo=named_utc), "moved")
        if e.v == 2:
            ctx.timer(T0 + timedelta(seconds=1), "past")  # refused: the call changes nothing
        return n + 1

    def fire(n: int, timer: Timer, ctx: Context[tuple[str, float]]) -> int:
        ctx.emit((timer.name, timer.time.timestamp() - BASE))
        return n

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=v)) for v in (1, 2, 4)]
    stream = Pipeline("zones").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = stream.process(arm, initial=int, on_timer=fire).write(sinks.memory("o")).run()
    names = ["utc", "plus_5", "epoch", "moved"]
    assert result["o"] == [(name, 3.0) for name in names] + [(name, 6.0) for name in names]
    (letter,) = result.dead_letters
    assert letter.error_type == "TimerInThePast"
    assert result.reconciles


def test_emitting_the_context_itself_is_a_dead_letter_saying_what_to_emit() -> None:
    # The context is one object, reset after each call: emitted, every record
    # sent on was that same object, saying what the last call left in it.
    def echo(state: int, e: Tick, ctx: Context[Any]) -> int:
        if e.v == 2:
            ctx.emit(ctx)
        ctx.emit(e.v)
        return state

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=v)) for v in (1, 2, 3)]
    stream = Pipeline("echo").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = stream.process(echo, initial=int).write(sinks.memory("out")).run()
    assert result["out"] == [1, 3]  # the failed call emits nothing
    (letter,) = result.dead_letters
    assert (letter.kind, letter.error_type) == ("user_error", "TypeError")
    assert "ctx.emit(ctx) sends on the context itself" in letter.message
    assert result.reconciles


@pytest.mark.parametrize("at", [1e12, math.inf, math.nan])
def test_a_timer_no_datetime_can_hold_is_a_dead_letter(at: float) -> None:
    def far(n: int, e: Tick, ctx: Context[int]) -> int:
        if e.v == 1:
            ctx.timer(at, "far")  # 1e12 s: the run used to fail when it fired
        else:
            ctx.timer(ctx.time + timedelta(seconds=1), "near")
        return n + 1

    def fire(n: int, timer: Timer, ctx: Context[int]) -> None:
        ctx.emit(n)

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=v)) for v in (1, 2)]
    stream = Pipeline("far").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = stream.process(far, initial=int, on_timer=fire).write(sinks.memory("o")).run()
    assert result["o"] == [1]  # the good timer fired; the bad one was never set
    (letter,) = result.dead_letters
    assert letter.error_type == "ValueError" and "years 1 to 9999" in letter.message
    assert result.reconciles


def test_a_timer_named_by_something_else_than_a_string_is_a_dead_letter() -> None:
    # A name is how a timer is found again (set again, cancelled, told apart
    # when it fires): an int or None was kept as it was, and cancel(1) of a
    # timer named "1" did nothing.
    def remind(n: int, e: Tick, ctx: Context[int]) -> int:
        at = ctx.time + timedelta(seconds=5)
        if e.v == 1:
            ctx.timer(at, 7)  # type: ignore[arg-type]
        elif e.v == 2:
            ctx.processing_timer(at, None)  # type: ignore[arg-type]
        elif e.v == 3:
            ctx.cancel(b"x")  # type: ignore[arg-type]
        else:
            ctx.timer(at, "fine")
        return n + 1

    def fire(n: int, timer: Timer, ctx: Context[int]) -> None:
        ctx.emit(timer.name)

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=v)) for v in (1, 2, 3, 4)]
    stream = Pipeline("names").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = stream.process(remind, initial=int, on_timer=fire).write(sinks.memory("o")).run()
    assert result["o"] == ["fine"]
    assert [d.error_type for d in result.dead_letters] == ["TypeError"] * 3
    shown_as = ("int 7", "NoneType None", "bytes b'x'")
    for letter, shown in zip(result.dead_letters, shown_as, strict=True):
        assert f"a timer's name must be a str; got {shown}" in letter.message
    assert result.reconciles


def test_a_timer_in_a_step_with_no_on_timer_is_a_dead_letter_that_says_so() -> None:
    def remind(n: int, e: Tick, ctx: Context[int]) -> int:
        if e.v == 2:
            ctx.timer(ctx.time + timedelta(seconds=5), "later")
        ctx.emit(e.v)
        return n + 1

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=i)) for i, v in enumerate([1, 2, 3])]
    stream = Pipeline("no_timer").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = stream.process(remind, initial=int).write(sinks.memory("out")).run()
    assert result["out"] == [1, 3]  # the call that set the timer took no effect
    (letter,) = result.dead_letters
    assert letter.kind == "user_error" and letter.error_type == "TypeError"
    assert "event timer 'later' of key 'a' set in a process step with no on_timer" in (
        letter.message
    )
    assert "Hint: pass process(on_event, initial=..., on_timer=on_timer)" in letter.message
    assert result.reconciles


def test_a_failing_handler_changes_nothing_and_the_others_go_on() -> None:
    def fragile(n: int, e: Tick, ctx: Context[int]) -> int:
        ctx.emit(n)
        if e.v < 0:
            raise ValueError("negative")
        return n + e.v

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=i)) for i, v in enumerate([1, -1, 2])]
    stream = (
        Pipeline("fragile")
        .read(sources.memory(ticks))
        .key_by(lambda e: e.k)
        .process(fragile, initial=int)
    )
    result = stream.write(sinks.memory("out")).run()
    assert result["out"] == [0, 1]  # the failing call emitted nothing, changed no state
    assert [d.kind for d in result.dead_letters] == ["user_error"]
    assert result.reconciles and result.expired == 1


def test_a_failing_initial_is_blamed_on_initial_and_the_key_goes_on() -> None:
    # The dead letter named the process function (or dispatch handler) when the
    # key's initial() raised: the user looked for the bug in the wrong function.
    from pipelines import stateful

    calls = {"n": 0}

    def first_state() -> list[int]:
        calls["n"] += 1
        if calls["n"] in (1, 3):  # a key's first event, then the timer of a dropped state
            raise LookupError("no state yet")
        return []

    def keep(state: list[int], e: Tick, ctx: Context[int]) -> list[int] | None:
        ctx.timer(ctx.time + timedelta(seconds=5), "later")
        ctx.emit(e.v)
        return None if e.v == 2 else [*state, e.v]  # v=2 drops the state

    def fire(state: list[int], timer: Timer, ctx: Context[int]) -> None:
        ctx.emit(-len(state))

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=v)) for v in (1, 2)]
    flow = Pipeline("init").read(sources.memory(ticks)).key_by(lambda e: e.k)
    blamed = f"<{first_state.__module__}.{first_state.__qualname__} line "
    blamed += f"{first_state.__code__.co_firstlineno}>"
    result = flow.process(keep, initial=first_state, on_timer=fire).write(sinks.memory("o")).run()
    # v=1: initial failed (no call); v=2: a fresh state, dropped; its timer: initial failed.
    assert result["o"] == [2]
    assert [(d.function, d.error_type) for d in result.dead_letters] == [
        (blamed, "LookupError"),
        (blamed, "LookupError"),
    ]
    assert json.loads(result.dead_letters[0].payload)["v"] == 1
    assert json.loads(result.dead_letters[1].payload) == {
        "key": "a",
        "timer": "later",
        "at": "2026-01-01T00:00:07+00:00",
    }
    assert result.reconciles

    calls["n"] = 0

    def count(state: list[int], e: Tick) -> tuple[list[int], int]:
        return [*state, e.v], len(state) + 1

    routed = (
        Pipeline("init_dispatch")
        .read(sources.memory(ticks))
        .key_by(lambda e: e.k)
        .dispatch({Tick: stateful(count, initial=first_state)})
    )
    result = routed.write(sinks.memory("o")).run()
    assert result["o"] == [1]
    (letter,) = result.dead_letters
    assert (letter.function, letter.error_type) == (blamed, "LookupError")
    assert result.reconciles


def test_a_timer_at_a_time_without_a_zone_says_what_to_set() -> None:
    def naive(n: int, e: Tick, ctx: Context[int]) -> int:
        ctx.timer(datetime(2026, 1, 1, 0, 5), "soon")  # noqa: DTZ001 - the mistake
        return n

    ticks = [Tick(k="a", v=1, time=T0)]
    flow = Pipeline("naive").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = (
        flow.process(naive, initial=int, on_timer=lambda n, t, c: n).write(sinks.memory("o")).run()
    )
    (letter,) = result.dead_letters
    assert "a timer needs a time with a timezone; got 2026-01-01T00:05:00" in letter.message
    assert "Hint: set it from the event's time, ctx.time + timedelta" in letter.message


def test_a_timer_at_something_that_is_no_time_says_how_to_make_one() -> None:
    # A delay given as the time ("ctx.timer(timedelta(minutes=5))") was refused as
    # "event time must be an aware datetime or epoch seconds", with no hint.
    made: list[Any] = [
        timedelta(minutes=5),
        "2026-01-01T00:05:00Z",
        None,
        ("wall", timedelta(seconds=30)),
    ]

    def bad(n: int, e: Tick, ctx: Context[int]) -> int:
        at = made[e.v]
        if isinstance(at, tuple):
            ctx.processing_timer(at[1], "p")
        else:
            ctx.timer(at, "t")
        return n

    ticks = [Tick(k="a", v=v, time=T0 + timedelta(seconds=v)) for v in range(len(made))]
    flow = Pipeline("no_time").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = (
        flow.process(bad, initial=int, on_timer=lambda n, t, c: n).write(sinks.memory("o")).run()
    )
    said = [d.message.split(" raised TypeError: ")[1] for d in result.dead_letters]
    assert said == [
        "a timer's time must be an aware datetime or epoch seconds; got timedelta "
        "datetime.timedelta(seconds=300). Hint: add it to the time being handled, "
        "ctx.time + datetime.timedelta(seconds=300).",
        "a timer's time must be an aware datetime or epoch seconds; got str "
        "'2026-01-01T00:05:00Z'. Hint: ctx.time + timedelta(minutes=5).",
        "a timer's time must be an aware datetime or epoch seconds; got NoneType None. "
        "Hint: ctx.time + timedelta(minutes=5).",
        "a timer's time must be an aware datetime or epoch seconds; got timedelta "
        "datetime.timedelta(seconds=30). Hint: add it to the wall clock, "
        "datetime.now(timezone.utc) + datetime.timedelta(seconds=30).",
    ]
    assert result.reconciles


def start_beats(n: int, e: Tick, ctx: Context[tuple[str, float, int]]) -> int:
    if n == 0:
        ctx.timer(ctx.time + timedelta(seconds=60), "beat")
    return n + 1


def beat(n: int, timer: Timer, ctx: Context[tuple[str, float, int]]) -> int:
    """A periodic timer: say how many events the key has had, every 60 s, for ever."""
    ctx.emit((timer.key, timer.time.timestamp() - BASE, n))
    ctx.timer(timer.time + timedelta(seconds=60), "beat")
    return n


def relay(n: None, e: Tick, ctx: Context[Tick]) -> None:
    ctx.emit(e)


def back_dated(n: None, e: Tick, ctx: Context[Tick]) -> None:
    """Emit a copy of each event dated ``e.v`` seconds before it."""
    ctx.emit(Tick(k=e.k, v=e.v, time=ctx.time - timedelta(seconds=e.v)))


@pytest.mark.parametrize(
    ("delay", "way"), [(0, "as_is"), (4, "as_is"), (0, "map"), (4, "clock"), (0, "merge")]
)
def test_records_a_process_step_dates_before_its_call_are_late_or_not_whatever_the_batches(
    delay: int, way: str
) -> None:
    """A window after a process step judges what the step emits against the time of the
    call that emitted it (``ctx.time``) less the window's max_delay: a record dated
    before it is late, or not, on every schedule alike, as a direct computation says.
    So too through a map (which may change the records), merged with another stream, and
    with a clock's function."""
    ticks = [Tick(k="ab"[i % 2], v=i * 7 % 13, time=T0 + timedelta(seconds=i)) for i in range(80)]
    expected: Counter[tuple[str, float]] = Counter()
    late = 0
    for e in ticks:
        t = e.time.timestamp() - BASE
        start = (t - e.v) // 10 * 10
        if start + 10 <= t - delay:
            late += 1
        else:
            expected[(e.k, start)] += 1
    assert late and expected
    for batch, workers in [(1, 1), (3, 1), (7, 2), (1000, 1), (1000, 2)]:
        p = Pipeline("back")
        emitted = (
            p.read(sources.memory(ticks, batch_size=batch))
            .key_by(lambda e: e.k)
            .process(back_dated, initial=lambda: None)
        )
        if way == "merge":
            emitted = emitted.merge(p.read(sources.memory([], schema=Tick), name="none"))
        if way == "map":
            emitted = emitted.map(lambda e: e.model_copy())
        clock = (
            windows.event_time(lambda e: e.time, max_delay=delay)
            if way == "clock"
            else windows.event_time(max_delay=delay)
        )
        counted = (
            emitted.key_by(lambda e: e.k, name="again")
            .window(windows.tumbling(seconds=10), clock=clock)
            .aggregate(n=agg.count())
        )
        result = (counted.write(sinks.memory("n")) | counted.late.write(sinks.memory("late"))).run(
            workers=workers
        )
        got = Counter({(r.key, r.start.timestamp() - BASE): r.n for r in result["n"]})
        assert (got, len(result["late"])) == (expected, late), (batch, workers)
        assert result.reconciles


def halve(e: Tick) -> Tick:
    if e.v == 3:
        raise ValueError("no half of 3")
    return e.model_copy(update={"v": e.v * 2})


def collect(n: None, e: Tick, ctx: Context[tuple[str, int]]) -> None:
    ctx.emit((e.k, e.v))


@pytest.mark.parametrize(("delay", "way"), [(0, "map"), (4, "map"), (4, "forward")])
def test_a_process_step_after_a_map_judges_each_record_against_its_own_making(
    delay: int, way: str
) -> None:
    """Records made at distinct times (one per call) through a map that fails on some
    and a filter, or a forward, reach a process step on event time: each is late when
    dated more than its max_delay before the call that made it, on every schedule."""
    ticks = [Tick(k="ab"[i % 2], v=i * 7 % 13, time=T0 + timedelta(seconds=i)) for i in range(80)]
    on_time: Counter[tuple[str, int]] = Counter()
    late = 0
    for e in ticks:
        if e.v in (3, 5):  # 3: the map fails (a dead letter); 5: filtered
            continue
        if e.v > delay:  # dated e.v seconds before its making
            late += 1
        else:
            on_time[(e.k, e.v * 2 if way == "map" else e.v)] += 1
    for batch, workers in [(1, 1), (3, 1), (7, 2), (1000, 1), (1000, 2)]:
        emitted = (
            Pipeline("after_map")
            .read(sources.memory(ticks, batch_size=batch))
            .key_by(lambda e: e.k)
            .process(back_dated, initial=lambda: None)
        )
        others = None
        if way == "map":
            kept = emitted.map(halve).filter(lambda e: e.v != 10)
        else:
            routes = emitted.forward(
                odd=lambda e: e.v == 3, five=lambda e: e.v == 5, otherwise="rest"
            )
            kept = routes.rest
            others = routes.odd.write(sinks.memory("odd")) | routes.five.write(sinks.memory("five"))
        collected = kept.key_by(lambda e: e.k, name="again").process(
            collect, initial=lambda: None, clock=windows.event_time(max_delay=delay)
        )
        written = collected.write(sinks.memory("n")) | collected.late.write(sinks.memory("late"))
        result = (written if others is None else written | others).run(workers=workers)
        assert (Counter(result["n"]), len(result["late"])) == (on_time, late), (batch, workers)
        assert result.reconciles


@pytest.mark.parametrize(
    ("delay", "batch", "after"),
    [(0, 1, False), (0, 4, False), (500, 3, False), (0, 1, True), (0, 5, True), (200, 2, True)],
)
def test_a_periodic_timer_stops_at_the_end_of_input_and_is_counted(
    delay: int, batch: int, after: bool
) -> None:
    """The same beats whatever the batches, the delay, and whether a step on event time
    comes before (``after``: the input's end of data is passed on to the next step)."""
    times = {"a": [0, 30, 190, 410], "b": [100, 101, 300]}
    ticks = sorted(
        (Tick(k=k, v=1, time=T0 + timedelta(seconds=s)) for k, ts in times.items() for s in ts),
        key=lambda e: e.time,
    )
    keyed = Pipeline("beats").read(sources.memory(ticks, batch_size=batch)).key_by(lambda e: e.k)
    if after:
        keyed = keyed.process(relay, initial=lambda: None).key_by(lambda e: e.k, name="again")
    stream = keyed.process(
        start_beats,
        initial=int,
        on_timer=beat,
        clock=windows.event_time(max_delay=delay),
        name="beats",
    )
    result = stream.write(sinks.memory("out")).run()
    # Directly: a key's beats every 60 s from its first event, up to the input's newest
    # event time, then the one pending there fires once; the one it sets never does.
    newest = 410
    expected = []
    for k, ts in times.items():
        at = ts[0] + 60
        while True:
            expected.append((k, float(at), sum(t <= at for t in ts)))
            if at > newest:
                break
            at += 60
    assert sorted(result["out"]) == sorted(expected)
    assert result.unfired == 2 and result.counts["beats"].unfired == 2
    assert result.counts["beats"].expired == 2 and result.reconciles
    assert "2 timers set after the end of input, never fired" in result.notes


def test_a_timer_set_again_at_its_own_time_is_refused_not_looped() -> None:
    def again(n: int, timer: Timer, ctx: Context[int]) -> int:
        ctx.emit(n)
        ctx.timer(timer.time, "again")  # would fire at once, for ever
        return n

    def first(n: int, e: Tick, ctx: Context[int]) -> int:
        ctx.timer(ctx.time + timedelta(seconds=1), "again")
        return n + 1

    ticks = [Tick(k="a", v=1, time=T0 + timedelta(seconds=s)) for s in (0, 5)]
    stream = Pipeline("again").read(sources.memory(ticks)).key_by(lambda e: e.k)
    result = stream.process(first, initial=int, on_timer=again).write(sinks.memory("o")).run()
    assert result["o"] == []  # each timer fired once, and its call failed: nothing took effect
    assert [d.error_type for d in result.dead_letters] == ["TimerInThePast"] * 2
    assert "the time of the timer being handled" in result.dead_letters[0].message
    assert "Hint" in result.dead_letters[0].message
    assert result.reconciles


def test_a_processing_timer_set_again_for_now_neither_hangs_nor_outlives_the_input() -> None:
    def first(n: int, e: Tick, ctx: Context[int]) -> int:
        if n == 0:
            ctx.processing_timer(time.time(), "poll")
        return n + 1

    def poll(n: int, timer: Timer, ctx: Context[int]) -> int:
        ctx.emit(n)
        ctx.processing_timer(time.time(), "poll")  # due at once, again and again
        return n

    def make(rng: random.Random, i: int) -> Tick:
        return Tick(k="a", v=i, time=T0 + timedelta(seconds=i))

    stream = (
        Pipeline("poll")
        .read(sources.generate(make, count=5, batch_size=1, rate=50))
        .key_by(lambda e: e.k)
        .process(first, initial=int, on_timer=poll)
    )
    result = stream.write(sinks.memory("o")).run()
    assert result["o"] and result["o"][-1] == 5  # the last poll, at the end, saw them all
    assert result.unfired == 1 and result.reconciles


@pytest.mark.parametrize("parts", [2, 3])
def test_events_of_one_time_from_several_partitions_come_in_one_order(parts: int) -> None:
    """Ties in event time go by partition, then by the partition's own order: the same
    sequence whatever the batches and workers (it used to follow their arrival)."""
    ticks = [Tick(k="a", v=i, time=T0 + timedelta(seconds=i // 4)) for i in range(60)]

    def keep(seen: list[int], e: Tick, ctx: Context[tuple[int, ...]]) -> list[int]:
        seen = [*seen, e.v]
        if len(seen) == len(ticks):
            ctx.emit(tuple(seen))
        return seen

    found = set()
    for workers in (1, 2):
        for batch in (1, 3, 7, 60):
            source = sources.memory(ticks, batch_size=batch, partitions=parts)
            stream = (
                Pipeline("ties")
                .read(source)
                .key_by(lambda e: e.k)
                .process(keep, initial=list, clock=windows.event_time(max_delay=5))
            )
            (seen,) = stream.write(sinks.memory("o")).run(workers=workers)["o"]
            found.add(seen)
    assert len(found) == 1
    (seen,) = found
    assert sorted(seen) == list(range(60))
    # Time order first; within a time, each partition's events in their own order.
    assert [v // 4 for v in seen] == sorted(v // 4 for v in seen)


def test_processing_timers_pending_at_the_end_fire_before_the_steps_after_end() -> None:
    def remind(n: int, e: Tick, ctx: Context[Tick]) -> int:
        if n == 0:
            ctx.processing_timer(time.time() + 3600, "later")  # still pending at the end
        return n + 1

    def fire(n: int, timer: Timer, ctx: Context[Tick]) -> None:
        ctx.emit(Tick(k=timer.key, v=n, time=ctx.time))

    ticks = [Tick(k=f"k{i % 3}", v=i, time=T0 + timedelta(seconds=i)) for i in range(30)]
    reminders = (
        Pipeline("remind")
        .read(sources.memory(ticks))
        .key_by(lambda e: e.k)
        .process(remind, initial=int, on_timer=fire)
    )
    counted = (
        reminders.key_by(lambda e: e.k, name="again")
        .window(windows.tumbling(seconds=100))
        .aggregate(n=agg.count(), total=agg.sum("v"))
    )
    result = counted.write(sinks.memory("o")).run()
    # Each key's reminder, dated at the input's end of data, counted downstream (it
    # used to come after the end and stop the run).
    assert sorted((r.key, r.n, r.total) for r in result["o"]) == [
        ("k0", 1, 10),
        ("k1", 1, 10),
        ("k2", 1, 10),
    ]
    assert not result.dead_letters and result.reconciles


def test_process_misuse_fails_when_the_step_is_added() -> None:
    keyed = Pipeline("p").read(sources.memory([], schema=Tick)).key_by(lambda e: e.k)
    with pytest.raises(TypeError, match="on_event must be a function"):
        keyed.process("nope", initial=int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be event time"):
        keyed.process(on_event, initial=dict, clock=windows.processing_time())
    with pytest.raises(ValueError, match=r"ttl must be positive; got 0 seconds\. Hint: .* ttl=60"):
        keyed.process(on_event, initial=dict, ttl=0)
    # It said "window on 'key_by'": the step being added is a process step.
    with pytest.raises(
        ValueError,
        match=r"^process 'process' \(input side, from 'key_by'\): .*'when' is not a field of Tick",
    ):
        keyed.process(on_event, initial=dict, clock=windows.event_time("when"))
    counted = keyed.window(windows.tumbling(seconds=5), clock=windows.processing_time()).aggregate(
        n=agg.count()
    )
    with pytest.raises(ValueError, match="whose results carry no watermark"):
        counted.key_by(lambda r: r.key).process(on_event, initial=dict)
    with pytest.raises(AttributeError, match="not keyed"):
        Pipeline("q").read(sources.memory([])).process  # noqa: B018


APP = """
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pipelines import Pipeline, sources, sinks, Event
from operators import windows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

class Tick(Event):
    k: str
    v: int

@dataclass
class Batch:  # the program's own class, in the snapshots
    n: int = 0
    sum: int = 0
    first: str = ""

def make(rng, i):
    return Tick(k=f"k{i % 23}", v=i % 7, id=f"t{i}", time=T0 + timedelta(milliseconds=50 * i))

def add(state, e, ctx):
    if not state.first:
        ctx.timer(ctx.time + timedelta(seconds=5))
    return Batch(state.n + 1, state.sum + e.v, state.first or e.id)

def flush(state, timer, ctx):
    ctx.emit({"id": f"{timer.key}/{state.first}", "n": state.n, "sum": state.sum})
    return None

pipeline = (
    Pipeline("crashproc")
    .read(sources.generate(make, count=int(os.environ["EVENTS"]), partitions=2, batch_size=40,
                           rate=float(os.environ["RATE"])))
    .key_by(lambda e: e.k)
    .process(add, initial=Batch, on_timer=flush, clock=windows.event_time(max_delay=0.2))
    .write(sinks.jsonl(os.environ["OUT"]))
)
"""


def expected_flushes(n: int) -> dict[str, tuple[int, int]]:
    """Each key's batches: from its first event, the events within the next 5 s."""
    found: dict[str, tuple[int, int]] = {}
    open_: dict[str, tuple[str, float, int, int]] = {}
    for i in range(n):
        k, ts, v = f"k{i % 23}", 0.05 * i, i % 7
        held = open_.get(k)
        if held is not None and ts >= held[1] + 5 - 1e-9:
            found[f"{k}/{held[0]}"] = (held[2], held[3])
            held = None
        if held is None:
            held = (f"t{i}", ts, 0, 0)
        open_[k] = (held[0], held[1], held[2] + 1, held[3] + v)
    for k, held in open_.items():
        found[f"{k}/{held[0]}"] = (held[2], held[3])
    return found


def test_process_state_and_timers_survive_kills_exactly(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = tmp_path / "flushes.jsonl"
    n = 4000
    env = {**os.environ, "EVENTS": str(n), "RATE": "800", "OUT": str(out)}
    command = [
        sys.executable, "-m", "pipelines", "run", f"{app}:pipeline",
        "--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.1", "--quiet",
    ]  # fmt: skip
    kills = kill_at_random(command, env, kills=4, seed=5)
    assert kills >= 4
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = Counter(r["id"] for r in rows)
    assert all(c == 1 for c in got.values()), [k for k, c in got.items() if c > 1][:5]
    assert {r["id"]: (r["n"], r["sum"]) for r in rows} == expected_flushes(n)


def test_stateful_handler_states_expire_after_their_ttl() -> None:
    from pipelines import stateful

    seen: list[int] = []

    def remember(n: int, e: Tick) -> tuple[int, int]:
        seen.append(n)
        return n + 1, n + 1

    def make(rng: random.Random, i: int) -> Tick:
        if i == 2:
            time.sleep(1.5)  # the key's state lives out its ttl meanwhile
        return Tick(k="a", v=i, time=T0)

    stream = (
        Pipeline("ttl")
        .read(sources.generate(make, count=4, batch_size=1, rate=20))
        .key_by(lambda e: e.k)
        .dispatch({Tick: stateful(remember, initial=int, ttl=0.5)})
    )
    result = stream.write(sinks.memory("out")).run()
    assert seen == [0, 1, 0, 1]  # the key starts afresh after the pause
    # One state dropped by its ttl, one left at the end.
    assert result.expired == 2 and result.reconciles


def bucket(
    on_event: Any, on_timer: Any, initial: Any, *, ttl: float, resume: Any = None
) -> tuple[ProcessLogic, Counters]:
    """One bucket of a process step "p" reading partition "e/p", with its counters."""
    counters = Counters(["p"])
    spec = ProcessSpec(
        pipeline="bucket",
        step="p",
        row=0,
        counters=counters,
        on_event=on_event,
        initial=initial,
        partitions=["e/p"],
        on_timer=on_timer,
        ttl=ttl,
    )
    return ProcessLogic(spec, resume), counters


def test_a_state_a_timer_makes_after_the_ttl_expires_in_its_turn() -> None:
    # A timer firing after its key's state had lived out its ttl made the state
    # anew (from initial()), and that state had no ttl left: it was held until the
    # end of the input, one per key, for ever on an endless stream.
    def on_event(seen: dict[str, int], e: None, ctx: Context[str]) -> dict[str, int]:
        ctx.timer(ctx._at + 100, "late")
        return {"n": seen.get("n", 0) + 1}

    def on_timer(seen: dict[str, int], timer: Timer, ctx: Context[str]) -> dict[str, int]:
        ctx.emit(f"{timer.key}:{seen.get('n', 0)}")
        return seen

    step, counters = bucket(on_event, on_timer, dict, ttl=10.0)
    row = counters.table()[0]
    records = [(f"k{i}", BASE + i, None) for i in range(10)]
    step.on_batch([Marked("e/p", records[-1][1], False, records)])
    # Event time moves to 200: each state expires at 10 to 19, its timer fires
    # at 100 to 109 (with a fresh state: it has expired), and that state expires too.
    got, _ = step.on_batch([Marked("e/p", BASE + 200, False, [("other", BASE + 200, None)])])
    assert sorted(item for tag, item in got if tag == "r") == sorted(f"k{i}:0" for i in range(10))
    assert row[COUNTER_FIELDS.index("expired")] == 20
    # Held: "other", its event at the watermark (was 11: ten states made by timers).
    assert row[COUNTER_FIELDS.index("open")] == 1
    assert step.states == {} and step.last == {}


def test_a_timer_moved_on_by_every_event_of_a_hot_key_takes_one_queue_entry() -> None:
    # The inactivity pattern: every event moves the key's "idle" timer 30
    # minutes on (and its processing-time "poll" an hour on), with a ttl. Each
    # move used to leave an entry in the queue until its time: 20,000 events
    # of one key held 40,000 entries. A moved timer keeps its one entry, queued
    # again at its time when it comes up; a snapshot taken midway resumes.
    def on_event(n: int, e: None, ctx: Context[tuple[str, float, int]]) -> int:
        ctx.timer(ctx._at + 1800, "idle")
        ctx.processing_timer(time.time() + 3600, "poll")
        return n + 1

    def on_timer(n: int, timer: Timer, ctx: Context[tuple[str, float, int]]) -> int:
        ctx.emit((timer.name, timer.time.timestamp() - BASE, n))
        return n

    def logic(resume: Any = None) -> tuple[ProcessLogic, Counters]:
        return bucket(on_event, on_timer, int, ttl=3600.0, resume=resume)

    def feed(step: ProcessLogic, first: int, last: int) -> list[Any]:
        out: list[Any] = []
        for start in range(first, last, 500):
            records = [("hot", BASE + i * 0.01, None) for i in range(start, start + 500)]
            got, _ = step.on_batch([Marked("e/p", records[-1][1], False, records)])
            out += [item for tag, item in got if tag == "r"]
            assert len(step.queue) <= 3 and len(step.wall) <= 1, (len(step.queue), start)
        return out

    step, _ = logic()
    assert feed(step, 0, 10_000) == []
    resumed, counters = logic(step.snapshot())
    out = feed(resumed, 10_000, 20_000)
    # One more event two hours on: the idle timer of the last event fires, with
    # every event counted, and the key's state then lives out its ttl.
    got, _ = resumed.on_batch([Marked("e/p", BASE + 7200, False, [("other", BASE + 7200, None)])])
    out += [item for tag, item in got if tag == "r"]
    last = round(19_999 * 0.01 + 1800, 6)
    assert [(name, round(at, 6), n) for name, at, n in out] == [("idle", last, 20_000)]
    row = counters.table()[0]
    assert row[COUNTER_FIELDS.index("expired")] == 1  # the hot key's state, by its ttl
    got, _ = resumed.on_eof()  # the poll timers fire at the end, each key's once
    assert sorted(item[0] for tag, item in got if tag == "r") == ["idle", "poll", "poll"]


def test_a_hot_key_of_a_stateful_handler_with_a_ttl_takes_one_entry_in_its_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every record used to queue an entry for its key's ttl until the ttl had
    # passed: 20,000 records of one key held 20,000 entries. Now each key holds
    # one, queued again at its own time when it comes up early.
    import types

    import operators._dispatch
    from operators._dispatch import DispatchLogic
    from pipelines import stateful
    from pipelines._running.compile import _dispatch

    now = [1000.0]  # the wall clock the step reads
    monkeypatch.setattr(operators._dispatch, "time", types.SimpleNamespace(time=lambda: now[0]))

    def count(n: int, e: Tick) -> tuple[int, None]:
        return n + 1, None

    keyed = Pipeline("hot").read(sources.memory([], schema=Tick)).key_by(lambda e: e.k)
    handled = keyed.dispatch({Tick: stateful(count, initial=int, ttl=30)}, name="handle")
    pipeline = handled._pipeline
    [node] = [n for n in pipeline.graph if n.name == "handle"]
    counters = Counters(["handle"])
    logic = DispatchLogic(_dispatch(pipeline, node), counters, 0, None)
    tick = Tick(k="hot", v=1, time=T0)
    for _ in range(40):
        logic.on_batch([Marked("r/p", BASE, False, [("hot", BASE, tick)] * 500)])
        now[0] += 0.1
        assert len(logic.due) == 1
    assert logic.states == {"hot": 20_000}
    now[0] = 1020.0
    logic.on_batch([Marked("r/p", BASE, False, [("hot", BASE, tick)])])  # moves the ttl on
    now[0] = 1040.0
    logic.on_notify()  # first due at 1030, but the key had an event since
    assert logic.states == {"hot": 20_001} and logic.due == [(1050.0, "hot")]
    now[0] = 1050.0
    logic.on_notify()
    assert logic.states == {} and logic.due == []
    assert counters.table()[0][COUNTER_FIELDS.index("expired")] == 1


class Visit(Event):  # held by a process step: its class must be importable
    user: str


def test_process_state_ttl_and_timers_are_exact_across_halts_on_other_worker_counts(
    tmp_path: Path,
) -> None:
    # Key states with a ttl, the ttl's entries in the step's queue and the
    # timers are in the snapshots whatever the worker count: halted four times
    # and resumed on 1, then 2 workers, the run writes what one whole run writes.
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(11)
    visits = [
        Visit(user=f"u{rng.randrange(200)}", time=t0 + timedelta(seconds=i / 10 + rng.random()))
        for i in range(20_000)
    ]
    halt = Halts()

    def visits_so_far(n: int, v: Visit, ctx: Any) -> int:
        ctx.timer(ctx.time + timedelta(seconds=20), "quiet")
        ctx.emit({"user": v.user, "n": n + 1, "id": v.id})
        return n + 1

    def quiet(n: int, timer: Any, ctx: Any) -> int:
        ctx.emit({"user": timer.key, "quiet_after": n, "id": f"{timer.key}@{ctx.time}"})
        return n

    def pipeline(out: str) -> Pipeline:
        return (
            Pipeline("visits")
            .read(sources.memory(visits, batch_size=50, partitions=2), name="visits")
            .map(halt, on_error="halt")
            .key_by(lambda v: v.user)
            .process(visits_so_far, initial=int, on_timer=quiet, ttl=30)
            .write(sinks.jsonl(tmp_path / out))
        )

    assert pipeline("whole.jsonl").run().reconciles
    halt.ids.update(visits[i].id for i in (2_500, 7_000, 13_000, 17_000))
    runs, result = resumed_until_done(pipeline("halted.jsonl"), tmp_path / "store")
    assert runs == 5 and result.reconciles
    whole = sorted_lines(tmp_path / "whole.jsonl")
    assert len(whole) > 10_000 and sorted_lines(tmp_path / "halted.jsonl") == whole


@pytest.mark.parametrize(("batch_size", "partitions"), [(1, 1), (1, 2), (3, 1), (8, 2)])
def test_the_watermark_a_call_sees_does_not_depend_on_the_batches(
    batch_size: int, partitions: int
) -> None:
    # ctx.watermark was the step's watermark when the batch was delivered: with batches
    # of 1 the first events saw 00:00:05, with larger ones 00:00:07, so a function that
    # read it (to set a timer after it, say) gave other results for other batch sizes.
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"k": "ab"[i % 2], "t": t0 + timedelta(seconds=i)} for i in range(8)]

    def on_event(state: int, row: dict[str, Any], ctx: Context[Any]) -> int:
        assert ctx.watermark is not None
        ctx.emit(("event", ctx.time.second, ctx.watermark.second))
        if state == 0:
            ctx.timer(ctx.watermark + timedelta(seconds=3))
        return state + 1

    def on_timer(state: int, timer: Timer, ctx: Context[Any]) -> int:
        assert ctx.watermark is not None
        ctx.emit(("timer", ctx.time.second, ctx.watermark.second))
        return state

    result = (
        Pipeline("marks")
        .read(sources.memory(rows, batch_size=batch_size, partitions=partitions))
        .key_by(lambda r: r["k"])
        .process(
            on_event,
            initial=int,
            on_timer=on_timer,
            clock=windows.event_time("t", max_delay=timedelta(seconds=2)),
        )
        .write(sinks.memory("o"))
        .run()
    )
    expected = [("event", s, s) for s in range(8)] + [("timer", 3, 3), ("timer", 4, 4)]
    assert sorted(result["o"]) == sorted(expected)


START: dict[str, list[int]] = {"seen": []}


def seen_so_far(state: dict[str, list[int]], e: Tick, ctx: Context[Any]) -> Any:
    state["seen"].append(e.v)  # in place, as a careless function does
    ctx.emit((e.k, list(state["seen"])))
    return state


@pytest.mark.parametrize("workers", [1, 2])
def test_an_initial_state_made_once_is_each_keys_own_copy(workers: int) -> None:
    """``initial=lambda: START`` gives each key a copy: no key sees another's events."""
    ticks = [Tick(k="ab"[i % 2], v=i, time=T0 + timedelta(seconds=i), id=f"t{i}") for i in range(8)]
    p = (
        Pipeline("copies")
        .read(sources.memory(ticks, batch_size=3))
        .key_by(lambda t: t.k)
        .process(seen_so_far, initial=lambda: START)
        .write(sinks.memory("o"))
    )
    out = p.run(workers=workers)["o"]
    expected = [
        (k, [v for v in range(8) if "ab"[v % 2] == k][:n]) for k in "ab" for n in (1, 2, 3, 4)
    ]
    assert sorted(out) == sorted(expected)
    assert START == {"seen": []}
