"""Random timestamped events through random windows agree with a pure-Python reference."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators import Event, agg, windows
from pipelines import Pipeline, sinks, sources

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Tick(Event):
    k: str
    v: int


def reference_marks(events: list[tuple[str, float, int]], delay: float) -> list[float]:
    """One partition in order: the watermark just before each event.

    It is the newest earlier event time minus the delay, judged event by
    event, so the chunk (batch) size does not matter.
    """
    newest = -math.inf
    marks = []
    for _, ts, _ in events:
        marks.append(newest - delay)
        newest = max(newest, ts)
    return marks


def reference_windows(
    kind: str,
    size: float,
    every: float,
    events: list[tuple[str, float, int, float]],
    n: int,
    align: datetime | None = None,
) -> tuple[Counter[tuple[Any, ...]], list[bool]]:
    """The windows of ``(key, ts, value, watermark)`` events, and which events were late.

    An event joins each of its windows whose end the watermark just before it
    has not reached; it is late when it joins none.
    """
    groups: dict[tuple[str, float, float], list[int]] = defaultdict(list)
    done: list[tuple[str, float, float, list[int]]] = []  # count windows may share bounds
    late: list[bool] = []
    if kind in ("tumbling", "sliding"):
        w = (
            windows.sliding(size, every, align_to=align)
            if kind == "sliding"
            else windows.tumbling(size, align_to=align)
        )
        for k, ts, v, wm in events:
            spans = [(s, e) for s, e in w.assign(ts) if e > wm]
            late.append(not spans)
            for start, end in spans:
                groups[(k, start, end)].append(v)
    elif kind == "session":
        by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for k, ts, v, wm in events:
            late.append(ts + size <= wm)
            if not late[-1]:
                by_key[k].append((ts, v))
        for k, items in by_key.items():
            items.sort()
            start, end, values = items[0][0], items[0][0] + size, [items[0][1]]
            for ts, v in items[1:]:
                if ts < end:
                    end = max(end, ts + size)
                    values.append(v)
                else:
                    groups[(k, start, end)] = values
                    start, end, values = ts, ts + size, [v]
            groups[(k, start, end)] = values
    else:  # count windows, in arrival order
        open_: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for k, ts, v, _ in events:
            late.append(False)
            open_[k].append((ts, v))
            if len(open_[k]) == n:
                items = open_.pop(k)
                done.append(
                    (k, min(t for t, _ in items), max(t for t, _ in items), [v for _, v in items])
                )
        for k, items in open_.items():
            done.append(
                (k, min(t for t, _ in items), max(t for t, _ in items), [v for _, v in items])
            )
    done += [(k, s, e, vs) for (k, s, e), vs in groups.items()]
    found = Counter(
        (k, round(s, 6), round(e, 6), len(vs), sum(vs), min(vs), max(vs), len(set(vs)))
        for k, s, e, vs in done
    )
    return found, late


@st.composite
def scenario(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = ("tumbling", "sliding", "session", "count"),
    behind: int = 8,
) -> dict[str, Any]:
    """A random case; events come out of order by up to ``behind`` quarter seconds."""
    kind = draw(st.sampled_from(kinds))
    partitions = 1 if kind == "count" else draw(st.sampled_from([1, 3]))
    delay = float(draw(st.sampled_from([0, 2, 5])))
    n_events = draw(st.integers(1, 120))
    base = sorted(draw(st.lists(st.integers(0, 400), min_size=n_events, max_size=n_events)))
    jitter = draw(st.lists(st.integers(-behind, 0), min_size=n_events, max_size=n_events))
    stamps = [max(0, b + j) / 4 for b, j in zip(base, jitter, strict=True)]
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n_events, max_size=n_events))
    values = draw(st.lists(st.integers(-5, 20), min_size=n_events, max_size=n_events))
    return {
        "kind": kind,
        "partitions": partitions,
        "delay": delay,
        "events": list(zip(keys, stamps, values, strict=True)),
        "size": float(draw(st.sampled_from([2, 5, 10]))),
        # A sliding window's step: size / 2 or size / 5 (2 or 5 windows an event).
        "steps": draw(st.sampled_from([2, 5])),
        # Where tumbling and sliding windows start: on the epoch's grid, or off it.
        "align": draw(st.sampled_from([0.0, 0.25, 0.75, 3.5])),
        # count, sum, min and max (of an int field) and count_distinct merge
        # slices of a sliding window (its panes, each event added once); with
        # collect each window adds it.
        "paned": draw(st.booleans()),
        "n": draw(st.integers(1, 5)),
        "batch": draw(st.sampled_from([1, 4, 50])),
        "workers": draw(st.sampled_from([1, 2])),
        # A step that stalls on one event for longer than idle_timeout: a busy
        # partition is not idle, so nothing changes.
        "stall": draw(st.integers(0, 4).map(lambda x: x == 0)),
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_windows_agree_with_reference(case: dict[str, Any]) -> None:
    agree_with_reference(case)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario(kinds=("sliding",), behind=40))
def test_sliding_windows_far_out_of_order_agree_with_reference(case: dict[str, Any]) -> None:
    # Events up to 10 s behind: many are behind the watermark for some of
    # their sliding windows and not for others (which, from panes, take them
    # beside their panes).
    agree_with_reference(case)


def agree_with_reference(case: dict[str, Any]) -> None:
    """Run the case's windows and compare every result and late event with the reference."""
    kind, size, parts = case["kind"], case["size"], case["partitions"]
    every = size / case["steps"] if kind == "sliding" else size
    events = case["events"]
    ticks = [
        Tick(k=k, v=v, time=T0 + timedelta(seconds=ts), id=f"e{i}")
        for i, (k, ts, v) in enumerate(events)
    ]
    align = T0 + timedelta(seconds=case["align"])
    window = {
        "tumbling": windows.tumbling(size, align_to=align),
        "sliding": windows.sliding(size, every, align_to=align),
        "session": windows.session(size),
        "count": windows.count(case["n"]),
    }[kind]
    stall_on = f"e{len(events) // 2}" if case["stall"] else None

    def stall(e: Tick) -> Tick:
        if e.id == stall_on:
            time.sleep(0.3)
        return e

    clock = windows.event_time("time", max_delay=case["delay"], idle_timeout=0.05)
    keyed = (
        Pipeline("prop")
        .read(sources.memory(ticks, partitions=parts, batch_size=case["batch"]))
        .map(stall)
        .filter(Tick)  # events of one class: a max of its int field slices
        .key_by(lambda e: e.k)
        .window(window, clock=clock)
    )
    aggs = {"n": agg.count(), "s": agg.sum("v"), "lo": agg.min("v"), "hi": agg.max("v")}
    if case["paned"]:
        aggs["d"] = agg.count_distinct("v")
    else:
        aggs["c"] = agg.collect("v")
    results = keyed.aggregate(**aggs)
    p = results.write(sinks.memory("out")) | results.late.write(sinks.memory("late"))
    r = p.run(workers=case["workers"])

    base = (T0 - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds()
    rel = [(k, base + ts, v) for k, ts, v in events]
    # Each partition (a contiguous part of the input) is judged on its own.
    marks: list[float] = []
    size_, extra = divmod(len(rel), parts)
    start = 0
    for p_ in range(parts):
        part = rel[start : start + size_ + (1 if p_ < extra else 0)]
        start += len(part)
        marks += reference_marks(part, case["delay"])
    judged = [(k, ts, v, wm) for (k, ts, v), wm in zip(rel, marks, strict=True)]
    expected, late_flags = reference_windows(kind, size, every, judged, case["n"], align)
    got = Counter(
        (x.key, round(x.start.timestamp(), 6), round(x.end.timestamp(), 6), x.n, x.s, x.lo, x.hi)
        + ((x.d,) if case["paned"] else (len(x.c),))
        for x in r["out"]
    )
    wanted: Counter[tuple[Any, ...]] = Counter()
    for w, n in expected.items():
        wanted[w[:7] + ((w[7],) if case["paned"] else (w[3],))] += n
    assert got == wanted
    assert sorted(e.id for e in r["late"]) == sorted(
        f"e{i}" for i, late in enumerate(late_flags) if late
    )
    assert r.reconciles and r.open_windows == 0
