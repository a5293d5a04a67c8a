"""Steps on event time after steps on event time: windows over window results, joins of joins."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime

from operators import Event, agg, windows
from operators._windowing import WindowLogic
from pipelines import Pipeline, Stream, sinks, sources, testing
from tests.helpers import Halts, resumed_until_done
from tests.reference import partition_marks

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
BASE = T0.timestamp()


class Hit(Event):
    page: str


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 150))
    base = sorted(draw(st.lists(st.integers(0, 2000), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-20, 0), min_size=n, max_size=n))
    return {
        "events": list(
            zip(
                draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n)),
                [max(0, b + j) / 4 for b, j in zip(base, jitter, strict=True)],
                strict=True,
            )
        ),
        "parts": draw(st.sampled_from([1, 2, 3])),
        "delay": float(draw(st.sampled_from([0, 2, 6]))),
        "batch": draw(st.sampled_from([1, 5, 64])),
        "workers": draw(st.sampled_from([1, 2, 4])),
        # Where both windows start: on the epoch's grid, or off it (align_to).
        "align": draw(st.sampled_from([0.0, 4.0, 7.5])),
    }


def on_time(
    events: list[tuple[str, float]], parts: int, delay: float, align: float = 0.0
) -> list[tuple[str, float]]:
    """The events the watermark just before them does not make late for their 10 s window.

    The windows start at ``align`` past each ten seconds.
    """
    marks = partition_marks([ts for _, ts in events], parts, delay)
    return [
        e
        for e, (wm, _, _) in zip(events, marks, strict=True)
        if ((e[1] - align) // 10 + 1) * 10 + align > wm
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_minute_totals_of_ten_second_counts_match_a_direct_count(case: dict[str, Any]) -> None:
    hits = [
        Hit(page=page, time=T0 + timedelta(seconds=ts), id=f"h{i}")
        for i, (page, ts) in enumerate(case["events"])
    ]
    clock = windows.event_time(max_delay=case["delay"])
    align = case["align"]
    per_ten = (
        Pipeline("chain")
        .read(sources.memory(hits, partitions=case["parts"], batch_size=case["batch"]))
        .key_by(lambda h: h.page)
        .window(windows.tumbling(seconds=10, align_to=BASE + align), clock=clock)
        .aggregate(n=agg.count(), name="per_ten")
    )
    per_minute = (
        per_ten.key_by(lambda r: r.key, name="by_page")
        .window(windows.tumbling(seconds=60, align_to=BASE + align))
        .aggregate(total=agg.sum("n"), windows=agg.count(), name="per_minute")
    )
    flow = per_minute.write(sinks.memory("out")) | per_minute.late.write(sinks.memory("late"))
    result = flow.run(workers=case["workers"])
    want: Counter[tuple[str, float]] = Counter()
    for page, ts in on_time(case["events"], case["parts"], case["delay"], align):
        want[(page, (ts - align) // 60 * 60 + align)] += 1
    got = {(r.key, round(r.start.timestamp() - BASE, 6)): r.total for r in result["out"]}
    assert got == dict(want)
    assert result["late"] == []  # nothing made by the first window is late for the second
    assert result.reconciles and result.open_windows == 0


class Reading(Event):
    sensor: str
    site: str
    level: int


def test_a_max_or_first_of_a_typed_field_can_be_summed_by_a_window_over_it() -> None:
    # max/min/first/last results were typed Any, so "peak per minute, then the
    # sum of the peaks per hour" was refused when the second aggregate was added.
    readings = [
        Reading(sensor=s, site="north", level=(i * 7 + len(s)) % 50, time=T0 + timedelta(seconds=i))
        for i in range(240)
        for s in ("s1", "s22")
    ]
    peaks = (
        Pipeline("peaks")
        .read(sources.memory(readings, schema=Reading, batch_size=37))
        .key_by(lambda r: r.sensor)
        .window(windows.tumbling(minutes=1))
        .aggregate(peak=agg.max("level"), low=agg.min("level"), site=agg.first("site"))
    )
    assert peaks.result_model.model_fields["peak"].annotation is int
    assert peaks.result_model.model_fields["site"].annotation is str
    hourly = (
        peaks.key_by(lambda r: r.site, name="by_site")
        .window(windows.tumbling(hours=1))
        .aggregate(peaks=agg.sum("peak"), lows=agg.mean("low"), name="hourly")
    )
    (got,) = testing.outputs(hourly)
    want: dict[tuple[str, int], list[int]] = {}
    for r in readings:
        want.setdefault((r.sensor, int((r.time - T0).total_seconds()) // 60), []).append(r.level)
    assert got.key == "north"
    assert got.peaks == sum(max(v) for v in want.values())
    assert got.lows == sum(min(v) for v in want.values()) / len(want)

    # A mean (or quantile) of means: typed Optional[float], they were refused too.
    means = peaks.key_by(lambda r: r.site, name="site_means").aggregate(
        m=agg.mean("low"), q=agg.quantile("low", 0.5), name="means"
    )
    hour_means = (
        hourly.key_by(lambda r: r.key, name="again")
        .window(windows.tumbling(hours=2))
        .aggregate(m=agg.mean("lows"), name="two_hours")
    )
    assert means.result_model.model_fields["m"].annotation is float
    (again,) = testing.outputs(hour_means)
    assert again.m == got.lows

    # A field that may be None is numeric; a None value is a dead letter, not a stop.
    class Maybe(Event):
        sensor: str
        level: int | None = None

    maybes = [Maybe(sensor="a", level=v, time=T0) for v in (3, None, 4)]
    summed = (
        Pipeline("maybe")
        .read(sources.memory(maybes, schema=Maybe))
        .key_by(lambda r: r.sensor)
        .aggregate(total=agg.sum("level"), avg=agg.mean("level"))
    )
    result = summed.write(sinks.memory("o")).run()
    assert [(r.total, r.avg) for r in result["o"]][-1] == (7, 3.5)
    assert [d.error_type for d in result.dead_letters] == ["TypeError"]
    assert result.reconciles

    # A field whose classes disagree on its type stays Any (and is refused as before).
    class Other(Event):
        sensor: str
        level: str

    mixed = Pipeline("mixed").read(sources.memory([], schema=Reading | Other))
    assert (
        mixed.key_by(lambda r: r.sensor)
        .aggregate(top=agg.max("level"))
        .result_model.model_fields["top"]
        .annotation
        is Any
    )


class Order(Event):
    customer: str


class Payment(Event):
    customer: str


class Refund(Event):
    customer: str


def test_a_join_of_a_join_and_a_window_over_join_results() -> None:
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    p = Pipeline("chains")
    orders = p.read(
        sources.memory(
            [
                Order(customer=c, time=at(s), id=f"o{s}")
                for c, s in [("ada", 0), ("bob", 5), ("ada", 70)]
            ]
        ),
        name="orders",
    ).key_by(lambda o: o.customer, name="ok")
    pays = p.read(
        sources.memory(
            [
                Payment(customer=c, time=at(s), id=f"p{s}")
                for c, s in [("ada", 3), ("bob", 8), ("ada", 75)]
            ]
        ),
        name="pays",
    ).key_by(lambda x: x.customer, name="pk")
    refunds = p.read(
        sources.memory([Refund(customer="ada", time=at(30), id="r30")]), name="refunds"
    ).key_by(lambda x: x.customer, name="rk")
    paid = orders.join(pays, between=(0, 10), name="paid")
    refunded = paid.key_by(lambda j: j.key, name="paid_key").join(
        refunds, between=(0, 60), name="refunded"
    )
    per_minute = (
        paid.key_by(lambda j: j.key, name="paid_customer")
        .window(windows.tumbling(seconds=60))
        .aggregate(n=agg.count(), name="paid_per_minute")
    )
    result = (refunded.write(sinks.memory("refunded")) | per_minute.write(sinks.memory("pm"))).run(
        workers=2
    )
    assert [(j.left.left.id, j.right.id) for j in result["refunded"]] == [("o0", "r30")]
    assert sorted((r.key, r.start.second, r.start.minute, r.n) for r in result["pm"]) == [
        ("ada", 0, 0, 1),
        ("ada", 0, 1, 1),
        ("bob", 0, 0, 1),
    ]
    assert result.reconciles


def test_a_window_over_the_whole_stream_merges_partials_from_every_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crossed = {"partials": 0, "events": 0}
    merge, timed = WindowLogic._merge, WindowLogic._timed

    def count_merge(self: WindowLogic, partials: list[Any], *args: Any) -> None:
        crossed["partials"] += len(partials)
        merge(self, partials, *args)

    def count_timed(self: WindowLogic, window: Any, records: list[Any], *args: Any) -> None:
        crossed["events"] += len(records)
        timed(self, window, records, *args)

    monkeypatch.setattr(WindowLogic, "_merge", count_merge)
    monkeypatch.setattr(WindowLogic, "_timed", count_timed)
    hits = [
        Hit(page=f"/{i % 7}", time=T0 + timedelta(seconds=i * 0.25), id=f"h{i}")
        for i in range(4000)
    ]
    per_minute = (
        Pipeline("everything")
        .read(sources.memory(hits, partitions=4, batch_size=100))
        .window_all(windows.tumbling(seconds=60))
        .aggregate(n=agg.count(), pages=agg.count_distinct("page"))
    )
    flow = per_minute.write(sinks.memory("out"))
    got = {}
    for workers in (1, 2, 4):
        result = flow.run(workers=workers)
        got[workers] = sorted((r.start.minute, r.n, r.pages) for r in result["out"])
        # Combined where read: the step takes in partial windows, far fewer than events.
        assert result.counts[per_minute.step].aggregated == 4000
        assert result.reconciles
    assert got[1] == got[2] == got[4]
    assert got[1] == [(m, 240, 7) for m in range(16)] + [(16, 160, 7)]
    # No event crossed to the window's one key alone: only partial windows did,
    # one per chunk and window (40 chunks of 100 events, each in one or two minutes).
    assert crossed["events"] == 0 and 0 < crossed["partials"] <= 3 * 80


class Seen(Event):
    page: str
    seen: AwareDatetime | None = None


def test_a_clock_on_a_window_bound_is_refused_and_one_that_may_be_none_is_taken() -> None:
    # event_time("start") after an aggregate was refused as "allows timezone-naive
    # times" (the field may be None); the real trouble is that results dated by a
    # bound fall late or into the next window, and the message now says so.
    hits = [Hit(page="a", time=T0 + timedelta(seconds=s)) for s in (0, 30, 59, 61)]
    per_minute = (
        Pipeline("bounds")
        .read(sources.memory(hits, schema=Hit))
        .key_by(lambda h: h.page)
        .window(windows.tumbling(minutes=1))
        .aggregate(n=agg.count())
    )
    again = per_minute.key_by(lambda r: r.key, name="again")
    for bound in ("start", "end"):
        with pytest.raises(ValueError, match=rf"\.{bound} is not when its result happened: .*"
                           rf"Hint: keep the default clock .* read r\.{bound}"):  # fmt: skip
            again.window(windows.tumbling(hours=1), clock=windows.event_time(bound))
    # A user's own time field that may be None is a clock; a None is a dead letter.
    seen = [Seen(page="a", seen=T0 + timedelta(seconds=s) if s % 2 else None) for s in range(6)]
    counted = (
        Pipeline("maybe_seen")
        .read(sources.memory(seen, schema=Seen))
        .key_by(lambda e: e.page)
        .window(windows.tumbling(minutes=1), clock=windows.event_time("seen"))
        .aggregate(n=agg.count())
    )
    result = counted.write(sinks.memory("o")).run()
    assert [r.n for r in result["o"]] == [3]
    assert [d.kind for d in result.dead_letters] == ["validation"] * 3
    assert result.reconciles


def disordered_hits(seed: int) -> list[Hit]:
    """20,000 hits of 5 pages, 20 a second, at most 2 s out of order (none late at max_delay=3)."""
    rng = random.Random(seed)
    return [
        Hit(page=f"p{rng.randrange(5)}", time=T0 + timedelta(seconds=i / 20 + rng.random() * 2))
        for i in range(20_000)
    ]


def halted_hits(
    name: str, seed: int, at: tuple[int, ...], partitions: int = 1
) -> tuple[list[Hit], Stream[Hit]]:
    """Read `disordered_hits` in pipeline ``name``, halting the run once at each hit of ``at``."""
    hits = disordered_hits(seed)
    halt = Halts(hits[i].id for i in at)
    read = sources.memory(hits, batch_size=50, partitions=partitions)
    return hits, Pipeline(name).read(read, name="hits").map(halt, on_error="halt")


def start_of(h: Hit, seconds: int) -> str:
    """The start of ``h``'s tumbling window of ``seconds``, as a result written to jsonl says it."""
    start = T0 + timedelta(seconds=(h.time - T0).total_seconds() // seconds * seconds)
    return start.isoformat().replace("+00:00", "Z")


def test_minute_totals_of_ten_second_counts_are_exact_across_halts_and_resumes(
    tmp_path: Path,
) -> None:
    # The second window's open windows and the watermark it is carried on are
    # in the snapshots too: halted four times and resumed each time from the
    # store, every event is counted once, in the minute of its page it fell in.
    hits, read = halted_hits("minutes", 3, (2_500, 6_000, 12_500, 16_500))
    per_ten = (
        read.key_by(lambda h: h.page)
        .window(windows.tumbling(seconds=10), clock=windows.event_time("time", max_delay=3))
        .aggregate(n=agg.count())
    )
    minutes = (
        per_ten.key_by(lambda r: r.key, name="by_page")
        .window(windows.tumbling(seconds=60))
        .aggregate(total=agg.sum("n"), name="per_minute")
        .write(sinks.jsonl(tmp_path / "out.jsonl"))
    )
    runs, result = resumed_until_done(minutes, tmp_path / "store", workers=(1,))
    assert runs == 5 and result.reconciles
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    got = Counter({(r["key"], r["start"]): r["total"] for r in rows})
    assert len(got) == len(rows)  # each minute of each page written once
    want = Counter((h.page, start_of(h, 60)) for h in hits)
    assert {k: int(v) for k, v in got.items()} == dict(want)


def test_a_window_over_the_whole_stream_is_exact_across_halts_on_two_workers(
    tmp_path: Path,
) -> None:
    # Its partial aggregates per worker, and the merge of them, resume from
    # the snapshots: halted four times, each window counts each event once.
    hits, read = halted_hits("whole", 5, (2_500, 7_000, 13_000, 17_000), partitions=2)
    counted = (
        read.window_all(windows.tumbling(seconds=10), clock=windows.event_time("time", max_delay=3))
        .aggregate(n=agg.count())
        .write(sinks.jsonl(tmp_path / "out.jsonl"))
    )
    runs, result = resumed_until_done(counted, tmp_path / "store", workers=(2,))
    assert runs == 5 and result.reconciles
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    got = {r["start"]: r["n"] for r in rows}
    want = Counter(start_of(h, 10) for h in hits)
    assert len(got) == len(rows) and got == dict(want)
