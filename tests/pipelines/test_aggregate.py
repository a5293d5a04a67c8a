"""aggregate: windows over keyed streams, event time, late events, running aggregates."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, AwareDatetime, Field, model_validator

from operators import Chunk, Event, Reader, Source, agg, windows
from operators._keying import Marked
from operators._stage import Counters
from operators._windowing import WindowLogic, WindowSpec, can_slice
from pipelines import Pipeline, PipelineHalted, WindowResult, sinks, sources, stateful, testing
from tests.helpers import counted_per_user, multiset

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


class Hit(Event):
    user: str
    amount: float = 1.0
    page: str = "/"


def hit(user: str, second: float, amount: float = 1.0) -> Hit:
    return Hit(user=user, amount=amount, time=T0 + timedelta(seconds=second), id=f"{user}@{second}")


def table(results: list[Any], *names: str) -> list[tuple[Any, ...]]:
    rows = []
    for r in results:
        rows.append(
            (
                r.key,
                (r.start - T0).total_seconds() if r.start else None,
                (r.end - T0).total_seconds() if r.end else None,
                *(getattr(r, n) for n in names),
            )
        )
    return sorted(rows)


@pytest.mark.parametrize("workers", [1, 2])
def test_windows_aligned_to_a_time_zones_midnight_agree_on_every_path(workers: int) -> None:
    tokyo = timezone(timedelta(hours=9))
    rng = random.Random(7)
    seconds = sorted(rng.uniform(0, 4 * 86400) for _ in range(400))
    seconds = [round(s, 3) for s in seconds]
    events = [hit(rng.choice("ab"), s, amount=float(i % 5)) for i, s in enumerate(seconds)]
    for i in range(0, len(events) - 3, 4):  # a little disorder
        events[i], events[i + 3] = events[i + 3], events[i]
    days: Counter[tuple[str, str]] = Counter()
    hours: Counter[tuple[str, datetime]] = Counter()
    for e in events:
        days[(e.user, e.time.astimezone(tokyo).date().isoformat())] += 1
        # 6-hour windows every 3 hours, starting at 01:30 UTC and every 3 hours from there
        past = (e.time - T0 - timedelta(hours=1, minutes=30)) // timedelta(hours=3)
        for k in (past - 1, past):
            hours[(e.user, T0 + timedelta(hours=1, minutes=30) + k * timedelta(hours=3))] += 1
    day = windows.tumbling(days=1, align_to=datetime(2024, 1, 1, tzinfo=tokyo))
    six = windows.sliding(hours=6, every=timedelta(hours=3), align_to=T0 + timedelta(minutes=90))
    clock = windows.event_time("time", max_delay=86400)
    for batch, combine, paned in [(1, True, True), (7, False, False), (1000, True, False)]:
        read = Pipeline("aligned").read(sources.memory(events, partitions=2, batch_size=batch))
        keyed = read.key_by(lambda e: e.user)
        everyone = read.window_all(day, clock=clock).aggregate(n=agg.count(), name="all_days")
        per_day = keyed.window(day, clock=clock).aggregate(
            n=agg.count(), total=agg.sum("amount"), combine=combine
        )
        shifts = keyed.window(six, clock=clock).aggregate(
            n=agg.count() if paned else agg.collect("amount"), name="shifts"
        )
        r = (
            per_day.write(sinks.memory("days"))
            | shifts.write(sinks.memory("shifts"))
            | everyone.write(sinks.memory("all"))
        ).run(workers=workers)
        together: Counter[str] = Counter()
        for (_, date), n in days.items():
            together[date] += n
        assert {x.start.astimezone(tokyo).date().isoformat(): x.n for x in r["all"]} == together
        got = Counter(
            {(x.key, x.start.astimezone(tokyo).date().isoformat()): x.n for x in r["days"]}
        )
        assert got == days and all(x.start.astimezone(tokyo).hour == 0 for x in r["days"])
        assert sum(x.total for x in r["days"]) == sum(e.amount for e in events)
        spans = Counter({(x.key, x.start): x.n if paned else len(x.n) for x in r["shifts"]})
        assert spans == hours and r.reconciles and not r.dead_letters, (batch, combine)


@pytest.mark.parametrize("workers", [1, 2])
def test_dict_records_are_aggregated_by_their_keys_on_every_path(workers: int) -> None:
    # Aggregators read fields as attributes only: every dict record was a dead letter
    # ("'dict' object has no attribute 'amount'").
    rng = random.Random(3)
    records = [
        {"user": rng.choice("ab"), "amount": float(rng.randrange(10)), "t": i * 0.5}
        for i in range(300)
    ]
    records.append({"user": "a", "t": 7.0})  # no amount: a dead letter naming the key
    clock = windows.event_time(lambda r: T0.timestamp() + r["t"], max_delay=1000)
    want: Counter[tuple[str, float]] = Counter()
    sums: Counter[tuple[str, float]] = Counter()
    for r in records[:-1]:
        want[(r["user"], r["t"] // 10 * 10)] += 1
        sums[(r["user"], r["t"] // 10 * 10)] += r["amount"]
    read = Pipeline("dicts").read(sources.memory(records, partitions=2, batch_size=16))
    keyed = read.key_by(lambda r: r["user"])
    tumbling = keyed.window(windows.tumbling(seconds=10), clock=clock).aggregate(
        n=agg.count(), total=agg.sum("amount"), top=agg.max("amount"), name="ten"
    )
    sliding = keyed.window(windows.sliding(seconds=20, every=10), clock=clock).aggregate(
        total=agg.sum("amount"), kept=agg.collect("amount"), name="twenty"
    )
    everyone = read.window_all(windows.tumbling(seconds=10), clock=clock).aggregate(
        total=agg.sum("amount"), name="everyone"
    )
    r = (
        tumbling.write(sinks.memory("ten"))
        | sliding.write(sinks.memory("twenty"))
        | everyone.write(sinks.memory("all"))
    ).run(workers=workers)
    start = T0.timestamp()
    got = {(x.key, x.start.timestamp() - start): (x.n, x.total) for x in r["ten"]}
    assert got == {w: (n, sums[w]) for w, n in want.items()}
    assert sum(x.total for x in r["all"]) == sum(sums.values())
    assert sum(len(x.kept) for x in r["twenty"]) == 2 * (len(records) - 1)
    assert r.reconciles
    assert [d.message.split(": ", 1)[1] for d in r.dead_letters] == [
        "the record has no key 'amount'"
    ] * 3  # once at each step that reads it


def test_tumbling_with_out_of_order_events_and_late_ones() -> None:
    # event time (s):  0   3   12   5    19   2        25
    # arrival order:   1   2   3    4    5    6        7
    # max_delay 8:     watermark after 12 is 4: event 5 is on time (>= 4);
    #                  after 19 it is 11: event 2's window [0,10) has closed,
    #                  so it is late; 25 closes [10,20).
    events = [hit("a", s) for s in (0, 3, 12, 5, 19, 2, 25)]
    results = (
        Pipeline("t")
        .read(sources.memory(events, schema=Hit, batch_size=1))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10), clock=windows.event_time("time", max_delay=8))
        .aggregate(n=agg.count(), total=agg.sum("amount"))
    )
    p = results.write(sinks.memory("out")) | results.late.write(sinks.memory("late"))
    r = p.run()
    assert table(r["out"], "n") == [("a", 0, 10, 3), ("a", 10, 20, 2), ("a", 20, 30, 1)]
    assert [e.id for e in r["late"]] == ["a@2"]
    agg_step = next(c for c in r.counts.values() if c.kind == "aggregate")
    assert (agg_step.received, agg_step.aggregated, agg_step.out) == (7, 6, 4)
    # read = aggregated + late (written) + filtered + dead-lettered
    assert r.read == r.aggregated + len(r["late"]) + r.filtered + r.dead
    assert r.reconciles and r.open_windows == 0
    assert r["out"][0].type == results.result_model.model_fields["type"].default


def test_late_events_with_no_sink_become_dead_letters() -> None:
    events = [hit("a", s) for s in (10, 1)]
    r = (
        Pipeline("t")
        .read(sources.memory(events, batch_size=1))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=5))
        .aggregate(n=agg.count())
        .write(sinks.memory("out"))
        .run()
    )
    [dead] = r.dead_letters
    assert dead.kind == "late" and "behind the watermark" in dead.message
    assert '"id":"a@1"' in dead.payload and r.reconciles


def test_sliding_session_and_count_windows_in_a_pipeline() -> None:
    events = [hit(u, s, amount=s) for u in ("a", "b") for s in (0, 4, 6, 21, 23, 40)]
    src = sources.memory(events, partitions=2, batch_size=3)
    keyed = Pipeline("w").read(src).key_by(lambda e: e.user)
    sliding = keyed.window(windows.sliding(seconds=10, every=5)).aggregate(n=agg.count())
    got = table(sliding.write(sinks.memory("o")).run()["o"], "n")
    # windows [-5,5) [0,10) [5,15) [15,25) [20,30) [35,45) [40,50) per user
    expected = [
        (-5, 5, 2),
        (0, 10, 3),
        (5, 15, 1),
        (15, 25, 2),
        (20, 30, 2),
        (35, 45, 1),
        (40, 50, 1),
    ]
    assert got == sorted((u, s, e, n) for u in ("a", "b") for s, e, n in expected)
    session = keyed.window(windows.session(seconds=5)).aggregate(n=agg.count(), s=agg.sum("amount"))
    got = table(session.write(sinks.memory("o")).run()["o"], "n", "s")
    # gap 5: {0,4,6} -> [0, 11); {21,23} -> [21, 28); {40} -> [40, 45)
    assert got == sorted(
        (u, s, e, n, t)
        for u in ("a", "b")
        for s, e, n, t in ((0, 11, 3, 10.0), (21, 28, 2, 44.0), (40, 45, 1, 40.0))
    )
    counted = keyed.window(windows.count(4)).aggregate(n=agg.count(), s=agg.sum("amount"))
    one = Pipeline("w").read(sources.memory(events, batch_size=3)).key_by(lambda e: e.user)
    counted = one.window(windows.count(4)).aggregate(n=agg.count(), s=agg.sum("amount"))
    got = table(counted.write(sinks.memory("o")).run()["o"], "n", "s")
    # per user in arrival order: (0,4,6,21) then the rest at the end of input (23,40)
    assert got == sorted(
        (u, s, e, n, t) for u in ("a", "b") for s, e, n, t in ((0, 21, 4, 31.0), (23, 40, 2, 63.0))
    )


def test_running_aggregates_emit_every_update_or_once() -> None:
    events = [hit(u, s, amount=s) for s, u in enumerate("abab")]
    keyed = Pipeline("r").read(sources.memory(events)).key_by(lambda e: e.user)
    running = keyed.aggregate(emit="running", total=agg.sum("amount")).write(sinks.memory("o"))
    got = sorted((x.key, x.total) for x in running.run()["o"])
    assert got == [("a", 0.0), ("a", 2.0), ("b", 1.0), ("b", 4.0)]
    final = keyed.aggregate(total=agg.sum("amount"), last=agg.last("amount"))
    r = final.write(sinks.memory("o")).run()
    assert sorted((x.key, x.total, x.last, x.start) for x in r["o"]) == [
        ("a", 2.0, 2.0, None),
        ("b", 4.0, 3.0, None),
    ]
    assert r.reconciles and r.open_windows == 0


def write_files(tmp_path: Path) -> Path:
    # Each user's events are spread over three files of very different sizes,
    # read by different workers at different speeds; every file is in order.
    rows: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in range(3000):
        user = f"u{i % 13}"
        f = 0 if i % 10 < 7 else (1 if i % 10 < 9 else 2)
        rows[f].append(
            json.dumps(
                {
                    "type": "hit",
                    "user": user,
                    "amount": i % 7,
                    "id": f"e{i}",
                    "time": (T0 + timedelta(seconds=i / 20)).isoformat(),
                }
            )
        )
    for f, lines in rows.items():
        (tmp_path / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_same_results_on_1_2_and_4_workers_with_keys_across_files(tmp_path: Path) -> None:
    folder = write_files(tmp_path)
    results = (
        Pipeline("files")
        .read(sources.jsonl(folder / "*.jsonl", schema=Hit, batch_size=50))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10), clock=windows.event_time("time", max_delay=0))
        .aggregate(n=agg.count(), total=agg.sum("amount"), top=agg.top_k("amount", 2))
    )
    p = results.write(sinks.memory("out")) | results.late.write(sinks.memory("late"))
    runs = [p.run(workers=w) for w in (1, 2, 4)]
    for r in runs:
        assert r.read == 3000 and r["late"] == [] and r.reconciles and r.open_windows == 0
        assert sum(x.n for x in r["out"]) == 3000
    assert multiset(runs[0]["out"]) == multiset(runs[1]["out"]) == multiset(runs[2]["out"])


def test_naive_time_at_run_time_is_a_dead_letter() -> None:
    events = [hit("a", 1)]
    naive = windows.event_time(lambda e: e.time.replace(tzinfo=None))
    r = (
        Pipeline("n")
        .read(sources.memory(events))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=5), clock=naive)
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
        .run()
    )
    [dead] = r.dead_letters
    assert dead.error_type == "ValueError" and "has no timezone" in dead.message
    assert r.reconciles


def test_processing_time_windows_close_at_the_end() -> None:
    r = (
        Pipeline("p")
        .read(sources.memory([hit("a", 0), hit("b", 0), hit("a", 0)]))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=3600), clock=windows.processing_time())
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
        .run()
    )
    assert sorted((x.key, x.n) for x in r["o"]) == [("a", 2), ("b", 1)]


class Tagged(Event):
    user: str = "u"
    tags: list[str]
    extra: dict[str, int]


class WithNaive(Event):
    user: str
    at: datetime


def test_misuse_fails_at_build_time() -> None:
    s = Pipeline("m").read(sources.memory([], schema=Hit))
    with pytest.raises(
        AttributeError,
        match=r"stream 'read_memory' is not keyed, so it has no "
        r"window\(\)\. Hint: key it first",
    ):
        s.window(windows.tumbling(seconds=1))  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=r"has no aggregate\(\).*or window the whole stream"):
        s.aggregate(n=agg.count())  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=r"has no join\(\)\. Hint: key it first: [^,]*\.$"):
        s.join(s)  # type: ignore[attr-defined]
    keyed = s.key_by(lambda e: e.user)
    win = keyed.window(windows.tumbling(seconds=1))
    with pytest.raises(ValueError, match=r"sum\(price\) reads field 'price', which Hit does not"):
        win.aggregate(total=agg.sum("price"))
    with pytest.raises(TypeError, match=r"mean\(page\) needs a numeric field"):
        win.aggregate(avg=agg.mean("page"))
    tagged = Pipeline("t").read(sources.memory([], schema=Tagged)).key_by(lambda e: e.user)
    with pytest.raises(
        TypeError,
        match=r"top_k\(tags, 3\) counts equal values, so it needs values a set can hold, but "
        r"Tagged.tags is list\[str\], whose values no set can hold \(they are not hashable\): "
        r"every event would be a dead letter\. Hint: map the field",
    ):
        tagged.window(windows.tumbling(seconds=1)).aggregate(top=agg.top_k("tags", 3))
    with pytest.raises(TypeError, match=r"max\(extra\) compares values, but Tagged.extra is dict"):
        tagged.aggregate(most=agg.max("extra"))  # a running aggregate is checked alike
    with pytest.raises(ValueError, match=r"no aggregators given"):
        win.aggregate()
    with pytest.raises(TypeError, match=r"n= must be an aggregator from operators.agg"):
        win.aggregate(n=len)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'key' cannot name a result value"):
        win.aggregate(key=agg.count())
    # a name every result (an event) has already: get_type=... broke dispatch by type,
    # model_config failed inside pydantic, copy= only warned
    for taken in ("get_type", "model_config", "copy", "model_dump"):
        with pytest.raises(ValueError, match=rf"'{taken}' cannot name a result value: every "):
            win.aggregate(**{taken: agg.count()})
    with pytest.raises(TypeError, match=r"window\(\) needs a window; got int"):
        keyed.window(10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"window\(clock=...\) needs windows.event_time"):
        keyed.window(windows.tumbling(seconds=1), clock="event")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"event_time field 'ts' is not a field of Hit"):
        keyed.window(windows.tumbling(seconds=1), clock=windows.event_time("ts"))
    naive = Pipeline("m").read(sources.memory([], schema=WithNaive)).key_by(lambda e: e.user)
    with pytest.raises(
        TypeError,
        match=r"event_time field WithNaive.at is datetime, which "
        r"allows timezone-naive times",
    ):
        naive.window(windows.tumbling(seconds=1), clock=windows.event_time("at"))
    unbounded = Pipeline("m").read(sources.generate(lambda r, i: hit("a", i), count=None))
    with pytest.raises(ValueError, match=r"emit='final' needs a bounded input.*Hint: window it"):
        unbounded.key_by(lambda e: e.user).aggregate(n=agg.count())
    with pytest.raises(ValueError, match=r"aggregate: emit must be 'final' or 'running'"):
        keyed.aggregate(emit="sometimes", n=agg.count())  # type: ignore[arg-type]
    done = keyed.window(windows.count(3)).aggregate(n=agg.count())
    with pytest.raises(ValueError, match=r"whose results carry no watermark"):
        done.key_by(lambda r: r.key).window(windows.tumbling(seconds=5)).aggregate(n=agg.count())


class Logic(WindowLogic):
    """A window step's logic whose outputs leave out its watermark reports and making times."""

    def on_batch(self, values: list[Marked]) -> tuple[list[tuple[str, Any]], bool]:
        out, done = super().on_batch(values)
        return [x for x in out if x[0] not in ("w", "t")], done

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        out, done = super().on_notify()
        return [x for x in out if x[0] not in ("w", "t")], done

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        out, done = super().on_eof()
        return [x for x in out if x[0] not in ("w", "t")], done


def spec(
    window: Any,
    clock: Any,
    *,
    parts: list[str],
    ttl: float | None = None,
    emit: str = "final",
    every: float | None = None,
    aggs: dict[str, Any] | None = None,
) -> WindowSpec:
    from pipelines._building.keyed import _result_model

    aggs = aggs or {"n": agg.count()}
    return WindowSpec(
        pipeline="p",
        step="s",
        row=0,
        counters=Counters(["s"]),
        window=window,
        clock=clock,
        names=list(aggs),
        aggs=list(aggs.values()),
        result_model=_result_model("s", aggs, None),
        partitions=parts,
        late_wanted=True,
        emit=emit,
        ttl=ttl,
        every=every,
    )


def test_closed_window_state_is_discarded() -> None:
    logic = Logic(spec(windows.tumbling(seconds=1), windows.event_time(), parts=["src/p0"]), None)
    records = [(f"k{i}", float(i % 100), None) for i in range(10_000)]
    out, _ = logic.on_batch([Marked("src/p0", 99.0, False, records)])
    assert len(logic.wins) == 100 * 100 - len(out)  # windows before 99 s closed already
    out2, _ = logic.on_batch([Marked("src/p0", 500.0, False, [])])
    assert len(out) + len(out2) == 10_000
    assert logic.wins == {} and logic.heap == []  # no state left once windows close


def test_watermark_is_the_minimum_over_partitions_and_idle_partitions_advance() -> None:
    logic = Logic(
        spec(
            windows.tumbling(seconds=10),
            windows.event_time(idle_timeout=0.05),
            parts=["s/a", "s/b"],
        ),
        None,
    )
    out, _ = logic.on_batch([Marked("s/a", 50.0, False, [("k", 1.0, None)])])
    assert out == []  # partition b has said nothing yet: the window stays open
    out, _ = logic.on_batch([Marked("s/b", 3.0, False, [("k", 3.0, None)])])
    assert out == [] and logic.watermark() == 3.0
    # b says nothing more, but its source has not said it is idle: a busy step
    # upstream never makes a partition idle, however long it takes
    assert logic.notify_at() is None
    time.sleep(0.06)
    out, _ = logic.on_notify()
    assert out == [] and logic.watermark() == 3.0
    # b's source says it has had nothing to read since now
    out, _ = logic.on_batch([Marked("s/b", -math.inf, False, [], idle_since=time.time())])
    assert out == [] and logic.notify_at() is not None
    time.sleep(0.06)
    out, _ = logic.on_notify()  # b idle longer than idle_timeout: a's watermark rules
    assert [r.n for _, r in out] == [2]
    # b reads again (its events went to other buckets: this one hears its progress)
    out, _ = logic.on_batch([Marked("s/b", 20.0, False, [])])
    assert logic.idle["s/b"] is None
    out, _ = logic.on_batch([Marked("s/a", 90.0, False, [("k", 70.0, None)])])
    assert out == [] and logic.notify_at() is None  # b holds window [70, 80) open again


def test_every_update_and_count_window_has_an_id_of_its_own() -> None:
    # A running aggregate's updates all had the id step/key/running, and a key's count
    # windows that start at one time (events of one second, or of one processing-time
    # batch) one id too: a sink that de-duplicates by id (sinks.nats) kept one of each.
    events = [hit("a", i // 10, amount=i) for i in range(30)]
    for i, e in enumerate(events):
        events[i] = e.model_copy(update={"id": f"h/{i}"})  # ids holding a "/" too
    firsts = [f"h%2F{i}" for i in range(0, 30, 4)]  # each count window's first event
    for batch in (1, 7, 1000):
        read = Pipeline("ids").read(sources.memory(events, batch_size=batch))
        keyed = read.key_by(lambda e: e.user)
        running = keyed.aggregate(emit="running", n=agg.count()).write(sinks.memory("o"))
        ids = [r.id for r in running.run()["o"]]
        assert ids == [f"aggregate_running_n/a/running/h%2F{i}" for i in range(30)]
        for clock in (windows.event_time(), windows.processing_time()):
            counted = keyed.window(windows.count(4), clock=clock).aggregate(n=agg.count())
            got = counted.write(sinks.memory("o")).run()["o"]
            assert [r.id.rsplit("/", 1)[1] for r in got] == firsts, (batch, clock)


def test_updates_and_count_windows_of_records_without_ids_are_named_by_their_content() -> None:
    # Dicts have no `id` attribute: every update was step/key/running, and count windows
    # of one start shared an id.
    rows = [{"user": "a", "n": i, "ts": 100.0 + i // 10} for i in range(30)]
    for batch in (1, 7, 1000):
        keyed = (
            Pipeline("dict_ids")
            .read(sources.memory(rows, batch_size=batch))
            .key_by(lambda r: r["user"])
        )
        running = keyed.aggregate(emit="running", n=agg.count()).write(sinks.memory("o"))
        ids = [r.id for r in running.run()["o"]]
        assert len(set(ids)) == 30
        assert all(i.startswith("aggregate_running_n/a/running/%23") for i in ids)
        runs = [ids]
        clock = windows.event_time(lambda r: r["ts"])
        counted = keyed.window(windows.count(4), clock=clock).aggregate(n=agg.count())
        got = [r.id for r in counted.write(sinks.memory("o")).run()["o"]]
        assert len(got) == 8 and len(set(got)) == 8, got  # the last, of 2, at the end
        runs.append(got)
        if batch == 1:
            first = runs
        assert runs == first, batch  # the same ids on every run, at any batch size


def test_a_running_key_that_expires_twice_gives_two_finals_of_their_own_ids() -> None:
    logic = Logic(spec(None, None, parts=["s/a"], ttl=0.05), None)
    finals = []
    for _ in range(2):
        logic.on_batch([Marked("s/a", 0.0, False, [("k", 0.0, None)])])
        time.sleep(0.06)
        finals += [r for _, r in logic.on_notify()[0]]
    assert [r.key for r in finals] == ["k", "k"] and finals[0].id != finals[1].id


def test_running_keys_expire_after_their_ttl() -> None:
    logic = Logic(spec(None, None, parts=["s/a"], ttl=0.05), None)
    logic.on_batch([Marked("s/a", 0.0, False, [("k", 0.0, None), ("j", 0.0, None)])])
    assert len(logic.wins) == 2 and logic.notify_at() is not None
    time.sleep(0.06)
    out, _ = logic.on_notify()
    assert sorted((r.key, r.n) for _, r in out) == [("j", 1), ("k", 1)]
    assert logic.wins == {}


def test_running_keys_resumed_from_a_snapshot_still_expire_after_their_ttl() -> None:
    # The keys' expiries are in the snapshot (they were not: resumed keys
    # never expired until they saw an event again); a snapshot without them
    # gives its keys a whole ttl anew.
    logic = Logic(spec(None, None, parts=["s/a"], ttl=0.05), None)
    logic.on_batch([Marked("s/a", 0.0, False, [("k", 0.0, None), ("j", 0.0, None)])])
    snap = logic.snapshot()
    older = {name: value for name, value in snap.items() if name != "expiry"}
    for saved in (snap, older):
        resumed = Logic(
            spec(None, None, parts=["s/a"], ttl=0.05), pickle.loads(pickle.dumps(saved))
        )
        assert resumed.notify_at() is not None
        time.sleep(0.06)
        out, _ = resumed.on_notify()
        assert sorted((r.key, r.n) for _, r in out) == [("j", 1), ("k", 1)]
        assert resumed.wins == {}


def test_clickstream_test_seam_with_windows() -> None:
    events = [hit("a", s) for s in range(30)]
    p = (
        Pipeline("seam")
        .read(sources.memory([], schema=Hit))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10))
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
    )
    assert sorted(x.n for x in testing.run(p, events, workers=2)["o"]) == [10, 10, 10]


def test_event_times_and_keys_are_checked_where_they_are_read() -> None:
    from operators import as_policy
    from operators._keying import ClockOp, event_seconds

    assert event_seconds(1.5) == 1.5
    with pytest.raises(
        TypeError,
        match=r"event time must be an aware datetime, epoch seconds or ISO 8601 text; "
        r"got list \[2026\]",
    ):
        event_seconds([2026])
    with pytest.raises(ValueError, match=r"event time 2026-01-01T00:00:00 has no timezone"):
        event_seconds("2026-01-01")
    clock = ClockOp(
        "agg", 0, lambda e: 7, windows.event_time(), as_policy("dead_letter"), kind="dispatch"
    )
    with pytest.raises(
        TypeError,
        match=r"step 'agg' \(dispatch\): key function .* must return "
        r"str; got int 7",
    ):
        clock.call(hit("a", 1))


def combined_pipeline(events: list[Hit], combine: bool) -> Pipeline:
    return (
        Pipeline("combined")
        .read(sources.memory(events, partitions=3))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10), clock=windows.event_time(max_delay=2))
        .aggregate(
            combine=combine,
            n=agg.count(),
            total=agg.sum("amount"),
            low=agg.min("amount"),
            pages=agg.count_distinct("page"),
            first=agg.first("amount"),
        )
        .write(sinks.memory("o"))
    )


def test_windows_combined_before_the_exchange_equal_windows_of_events() -> None:
    import random

    rng = random.Random(5)
    events = [
        hit(f"u{rng.randrange(30)}", i * 0.05 + rng.uniform(-3, 0), float(rng.randrange(100)))
        for i in range(6000)
    ]
    names = ("n", "total", "low", "pages", "first")
    plain = combined_pipeline(events, combine=False).run()
    assert plain.reconciles
    for workers, processes in ((2, 1), (1, 2)):
        result = combined_pipeline(events, combine=True).run(workers=workers, processes=processes)
        assert result.reconciles
        assert multiset(table(result["o"], *names)) == multiset(table(plain["o"], *names))
        # the same events were late (behind their partition's watermark) either way
        assert sorted(d.payload for d in result.dead_letters) == sorted(
            d.payload for d in plain.dead_letters
        )
        assert result.counts["aggregate_tumbling_10s_n_total_low_pages_first"].late > 0


def test_combiner_sends_events_behind_the_watermark_as_they_are() -> None:
    from operators._windowing import Combiner

    combiner = Combiner(windows.tumbling(10), [agg.count(), agg.sum("amount")], delay=0.0)

    aside: list[Any] = []

    def combine(records: list[Any], partition: str) -> tuple[list[Any], list[Any]]:
        wins: dict[Any, Any] = {}
        raw, _ = combiner.add_chunk(
            records, partition, -math.inf, wins, lambda r, wm: aside.append((r, wm))
        )
        return raw, combiner.partials(wins)

    first = [("a", 12.0, hit("a", 12)), ("a", 15.0, hit("a", 15)), ("b", 25.0, hit("b", 25))]
    raw, partials = combine(first, "src/p0")
    assert raw == []
    sums = combiner.aggs[1]
    assert sorted((k, s, e, [n, sums.result(t)], ids) for k, s, e, (n, t), ids in partials) == [
        ("a", 10.0, 20.0, [2, 2.0], ["a@12", "a@15"]),
        ("b", 20.0, 30.0, [1, 1.0], ["b@25"]),
    ]
    late = ("a", 18.0, hit("a", 18))
    raw, partials = combine([late, ("a", 31.0, hit("a", 31))], "src/p0")
    assert raw == [late]  # behind the partition's watermark (25): judged at the window
    assert [(k, s, ids) for k, s, _, _, ids in partials] == [("a", 30.0, ["a@31"])]
    # Behind an earlier event of its own chunk: set aside with the watermark it is behind.
    early = ("b", 33.0, hit("b", 33))
    raw, partials = combine([("a", 40.0, hit("a", 40)), early, ("a", 41.0, hit("a", 41))], "p0")
    assert aside == [(early, 40.0)] and raw == []
    assert [(k, s, ids) for k, s, _, _, ids in partials] == [("a", 40.0, ["a@40", "a@41"])]


def near_window_ends() -> list[float]:
    """Times right at the ends of 10-second windows, and within microseconds of them."""
    times: list[float] = []
    for epoch in (0.0, 1_767_225_600.0, 4.5e9, 6.1e9, 2.5e11):
        for k in (1, 2, 3):
            end = epoch + 10.0 * k
            for d in (-3e-6, -2e-6, -1.5e-6, -1e-6, -5e-7, -1e-7, 0.0, 1e-7, 5e-7, 1e-6, 2e-6):
                times.append(end + d)
            times += [math.nextafter(end, -math.inf), math.nextafter(end, math.inf)]
    return sorted(times)


def counted_by_start(window: Any, times: list[float]) -> dict[int, int]:
    """Count events at ``times`` (epoch seconds) per window of one key: start in µs -> count."""
    counted = (
        Pipeline("ends")
        .read(sources.memory([{"t": ts} for ts in times]))
        .key_by(lambda r: "k")
        .window(window, clock=windows.event_time(lambda r: r["t"], max_delay=60, max_future=None))
        .aggregate(n=agg.count())
    )
    result = counted.write(sinks.memory("o")).run()
    assert result.reconciles and not result.dead_letters
    return {round(r.start.timestamp() * 1e6): r.n for r in result["o"]}


def test_events_near_a_window_end_go_to_the_window_they_round_into() -> None:
    # Events in the window of the one before are told so by comparing seconds,
    # without rounding each to microseconds: right at the ends, and far in
    # time, they must land where Tumbling.start_of puts them, combined where
    # they are read or not.
    from operators._windowing import Combiner
    from operators.windows import Tumbling

    window = Tumbling(10.0)
    times = near_window_ends()
    records = [("k", ts, Hit(user="k", time=T0, id=f"e{i}")) for i, ts in enumerate(times)]
    combiner = Combiner(windows.tumbling(10), [agg.count()], delay=math.inf)
    wins: dict[Any, Any] = {}
    raw, _ = combiner.add_chunk(records, "p", -math.inf, wins, lambda r, wm: None)
    assert raw == []
    start_of = {i: start for (_, start), (_, ids) in wins.items() for i in ids}
    assert {f"e{i}": window.start_of(ts) for i, ts in enumerate(times)} == start_of
    assert counted_by_start(window, times) == Counter(
        round(window.start_of(ts) * 1e6) for ts in times
    )


def test_events_near_a_window_end_go_to_the_sliding_windows_they_round_into() -> None:
    # Events between the same two window starts as the one before are given
    # its windows without rounding: at and near the ends, as Sliding.assign.
    from operators.windows import Sliding

    window = Sliding(10.0, 2.0)
    times = near_window_ends()
    assert counted_by_start(window, times) == Counter(
        round(start * 1e6) for ts in times for start, _ in window.assign(ts)
    )


def test_a_batch_of_chunks_judges_lateness_chunk_by_chunk() -> None:
    # Two chunks of one partition in one item: the second chunk's event at 3 s is
    # behind the watermark the first chunk set (20 s), as if they came one by one.
    def run(values: list[Marked]) -> tuple[list[Any], dict[str, int]]:
        logic = Logic(spec(windows.tumbling(seconds=10), windows.event_time(), parts=["s/a"]), None)
        out, _ = logic.on_batch(values)
        out += logic.on_eof()[0]
        return sorted((tag, getattr(v, "n", None)) for tag, v in out), logic.spec.counters.totals()[
            "s"
        ]

    first = [("k", 1.0, hit("k", 1)), ("k", 20.0, hit("k", 20))]
    second = [("k", 3.0, hit("k", 3)), ("k", 21.0, hit("k", 21))]
    apart = run([Marked("s/a", 20.0, False, first), Marked("s/a", 21.0, False, second)])
    batched = run([Marked("s/a", 21.0, False, first + second, cuts=[(2, 20.0)])])
    assert batched == apart
    assert batched[1]["late"] == 1 and [n for tag, n in batched[0] if tag == "r"] == [1, 2]


def test_bucketize_sends_one_item_per_bucket_for_a_batch_and_combines_across_it() -> None:
    from operators._keying import BUCKET_KEYS, Bucketize
    from operators._stage import Packet
    from operators._windowing import Combiner

    def packet(records: list[Any], eof: bool = False) -> Packet:
        return Packet([records], source="s", partition="a", eof=eof)

    chunks = [
        [("k", 1.0, hit("k", 1)), ("j", 2.0, hit("j", 2))],
        [("k", 4.0, hit("k", 4))],
        [],
    ]
    combine = Combiner(windows.tumbling(10), [agg.count()], delay=0.0)
    items = Bucketize(0, buckets=4, combine=combine)(
        [packet(chunks[0]), packet(chunks[1]), packet(chunks[2], eof=True)]
    )
    assert sorted(b for b, _ in items) == sorted(BUCKET_KEYS[:4])  # one item per bucket
    marks = [m for _, m in items]
    assert all(m.partition == "s/a" and m.latest == 4.0 and m.eof for m in marks)
    partials = sorted((p[0], p[1], p[3], p[4]) for m in marks for p in m.partials)
    # k's two events, in two chunks, make one partial window
    assert partials == [("j", 0.0, [1], ["j@2"]), ("k", 0.0, [2], ["k@1", "k@4"])]
    assert sum(m.combined for m in marks) == 3 and all(m.records == [] for m in marks)
    plain = Bucketize(0, buckets=4)([packet(chunks[0]), packet(chunks[1])])
    k_mark = next(m for _, m in plain if any(r[0] == "k" for r in m.records))
    assert [r[1] for r in k_mark.records] == [1.0, 4.0]
    assert k_mark.cuts == [(1, 2.0)] and k_mark.latest == 4.0


def test_a_partial_for_a_closed_window_becomes_late_dead_letters_by_event_id() -> None:
    logic = Logic(
        spec(windows.tumbling(seconds=10), windows.event_time(), parts=["s/a", "s/b"]), None
    )
    logic.spec.late_wanted = False
    logic.on_batch([Marked("s/a", 50.0, False), Marked("s/b", 50.0, False)])
    assert logic.closed == 50.0
    marked = Marked("s/a", 55.0, False, partials=[("k", 30.0, 40.0, [2], ["e1", "e2"])], combined=2)
    out, _ = logic.on_batch([marked])
    letters = [v for tag, v in out if tag == "d"]
    assert [json.loads(d.payload)["id"] for d in letters] == ["e1", "e2"]
    assert {d.kind for d in letters} == {"late"} and "had closed" in letters[0].message
    row = logic.spec.counters.totals()["s"]
    assert row["in"] == 2 and row["dead"] == 2 and row["late"] == 2 and row["aggregated"] == 0


class Shaky(agg.Aggregator):
    """A user's aggregator that cannot take some values."""

    field = "amount"

    def create(self) -> float:
        return 0.0

    def add(self, acc: float, value: Any, ts: float, event: Any) -> float:
        if value == 13:
            raise ValueError("13 is unlucky")
        return acc + value

    def merge(self, a: float, b: float) -> float:
        return a + b


@pytest.mark.parametrize(
    "window",
    [windows.tumbling(seconds=10), windows.sliding(seconds=10, every=5), windows.count(3), None],
    ids=["tumbling", "sliding", "count", "running"],
)
def test_an_aggregator_that_fails_dead_letters_the_event_and_the_run_goes_on(window: Any) -> None:
    events = [hit("a", s, amount=13.0 if s in (3, 4) else 1.0) for s in range(12)]
    keyed = Pipeline("agg_err").read(sources.memory(events)).key_by(lambda e: e.user)
    aggregated = (
        keyed.aggregate(n=agg.count(), total=Shaky())
        if window is None
        else keyed.window(window).aggregate(n=agg.count(), total=Shaky())
    )
    result = aggregated.write(sinks.memory("o")).run()
    assert result.reconciles
    assert [json.loads(d.payload)["id"] for d in result.dead_letters] == ["a@3", "a@4"]
    letter = result.dead_letters[0]
    assert letter.kind == "user_error" and "13 is unlucky" in letter.message
    assert "n=count(), total=shaky(amount)" in letter.message
    # the two events count nowhere else: every other event is in exactly one result
    copies = 2 if isinstance(window, windows.Sliding) else 1  # a sliding window's event is in 2
    assert sum(r.n for r in result["o"]) == 10 * copies
    assert all(r.total == r.n for r in result["o"])


class Capped(Shaky):
    """A user's aggregator that fails once a window holds 2 or more."""

    def add(self, acc: float, value: Any, ts: float, event: Any) -> float:
        if acc >= 2:
            raise ValueError("full")
        return acc + value


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_a_sliding_windows_event_joins_all_its_windows_or_none(batch: int) -> None:
    # Windows of 10 s every 5 s. 12 s belongs to [5, 15), which already holds 6 s
    # and 7 s (full: its add fails), and to [10, 20), which is new (its add would
    # succeed): the event joins neither and is one dead letter.
    events = [hit("a", s) for s in (6, 7, 12)]
    results = (
        Pipeline("all_or_none")
        .read(sources.memory(events, batch_size=batch))
        .key_by(lambda e: e.user)
        .window(windows.sliding(seconds=10, every=5))
        .aggregate(n=agg.count(), total=Capped(), combine=False)
    )
    result = results.write(sinks.memory("o")).run()
    assert result.reconciles
    assert [json.loads(d.payload)["id"] for d in result.dead_letters] == ["a@12"]
    assert "full" in result.dead_letters[0].message
    assert table(result["o"], "n", "total") == [("a", 0, 10, 2, 2.0), ("a", 5, 15, 2, 2.0)]


@pytest.mark.parametrize("batch", [1, 2, 100])
@pytest.mark.parametrize("slices", [True, False])
def test_a_sliding_windows_event_behind_the_watermark_joins_its_open_windows_only(
    batch: int, slices: bool
) -> None:
    # Windows of 10 s every 2 s, no delay: after 20 s the watermark is 20.
    # 15.5 s is in [6, 16) to [14, 24); only [12, 22) and [14, 24) end after
    # 20 and take it. 13 s: [12, 22) alone. 9 s: all its windows end by 20,
    # late. 21 s and 23 s are on time: with count, sum and max of a float
    # (`slices`) each is added once, to its 2 s pane, and [12, 22) and [14, 24)
    # merge their panes with the events behind the watermark; with collect,
    # each window adds it.
    seconds = (20, 15.5, 13, 9, 21, 23)
    events = [hit("a", s, amount=s) for s in seconds]
    window = windows.sliding(seconds=10, every=2)
    keyed = (
        Pipeline("behind")
        .read(sources.memory(events, batch_size=batch))
        .filter(Hit)  # events of one class: a max of its float field slices
        .key_by(lambda e: e.user)
        .window(window)
    )
    aggs = {"n": agg.count(), "total": agg.sum("amount"), "top": agg.max("amount")}
    if not slices:
        aggs["all"] = agg.collect("amount")
    assert can_slice(window, list(aggs.values()), (Hit,)) is slices
    results = keyed.aggregate(**aggs)
    result = (results.write(sinks.memory("o")) | results.late.write(sinks.memory("late"))).run()
    assert result.reconciles
    assert [e.id for e in result["late"]] == ["a@9"]
    expected: dict[float, list[float]] = {}
    taken = {20: 20, 15.5: 20, 13: 20, 21: 20, 23: 20}  # the watermark each event met
    for s, wm in taken.items():
        for start in range(0, 30, 2):
            if start <= s < start + 10 and start + 10 > wm:
                expected.setdefault(start, []).append(s)
    assert table(result["o"], "n", "total", "top") == [
        ("a", start, start + 10, len(v), sum(v), max(v)) for start, v in sorted(expected.items())
    ]
    assert ("a", 12, 22, 4, 20 + 15.5 + 13 + 21) in table(result["o"], "n", "total")


def sliding_counts(paned: bool, *, early: bool = False) -> WindowSpec:
    """A spec of count and sum over 10 s sliding windows every 2 s, from panes or not."""
    made = spec(
        windows.sliding(seconds=10, every=2),
        windows.event_time(max_delay=86_400 if early else 0),
        parts=["s/a"],
        emit="early" if early else "final",
        every=1e-9 if early else None,
        aggs={"n": agg.count(), "total": agg.sum("amount")},
    )
    assert made.paned  # count and sum slice
    made.paned = paned  # as an evflow that added each event to each window
    return made


def window_rows(out: list[Any]) -> list[tuple[float, float, int, float, bool]]:
    return [
        (r.start.timestamp(), r.end.timestamp(), r.n, r.total, r.final)
        for tag, r in out
        if tag == "r"
    ]


def test_a_sliding_window_made_directly_of_a_size_no_whole_number_of_steps_counts_exactly() -> None:
    # windows.sliding asks for a size that is a whole number of steps; a
    # Sliding made directly may have another. Its windows then do not cover
    # whole panes (a pane is a step of time), so each event goes to each of
    # its windows instead: every window holds exactly the events in it.
    window = windows.Sliding(size=25, every=10)
    assert not can_slice(window, [agg.count()])
    hits = [hit("a", i) for i in range(60)]
    result = (
        Pipeline("odd_slide")
        .read(sources.memory(hits, batch_size=7))
        .key_by(lambda h: h.user)
        .window(window)
        .aggregate(n=agg.count(), total=agg.sum("amount"))
        .write(sinks.memory("out"))
        .run()
    )
    got = sorted(((r.start - T0).total_seconds(), r.n) for r in result["out"])
    assert got == [
        (start, sum(start <= i < start + 25 for i in range(60))) for start in range(-20, 60, 10)
    ]
    assert result.reconciles


def test_early_results_of_sliding_windows_from_panes_count_every_event_so_far() -> None:
    logic = Logic(sliding_counts(True, early=True), None)
    seen: list[float] = []
    for ts in (1.0, 3.0, 2.5, 9.0, 14.0, 4.0):
        seen.append(ts)
        out, _ = logic.on_batch([Marked("s/a", max(seen), False, [("k", ts, hit("k", ts, ts))])])
        rows = window_rows(out)
        # every open window of the key, each with the events so far in it
        assert {row[:2] for row in rows} == {
            (float(start), float(start + 10))
            for start in range(-8, 16, 2)
            if any(start <= t < start + 10 for t in seen)
        }
        for start, end, n, total, final in rows:
            inside = [t for t in seen if start <= t < end]
            assert (n, total, final) == (len(inside), sum(inside), False)
    finals = window_rows(logic.on_eof()[0])
    assert all(final for *_, final in finals) and len(finals) == 12
    assert logic.panes == {} and logic.wins == {}


@pytest.mark.parametrize(
    ("before", "after"),
    [(True, True), (False, True), (True, False)],
    ids=["panes", "from_whole_windows", "to_whole_windows"],
)
def test_sliding_windows_resume_from_a_snapshot_with_or_without_panes(
    before: bool, after: bool
) -> None:
    # A snapshot of windows from panes, or of windows that each added their
    # events (an earlier evflow), resumed either way: the same results.
    first = [Marked("s/a", 9.0, False, [("k", ts, hit("k", ts, ts)) for ts in (1, 3, 2.5, 9)])]
    # 9.5 s comes behind the watermark (14): of its windows, [6, 16) and [8, 18) take it
    rest = [
        Marked("s/a", latest, False, [("k", ts, hit("k", ts, ts)) for ts in times])
        for latest, times in ((14.0, (14, 13)), (14.0, (9.5,)), (30.0, (30,)))
    ]
    whole = Logic(sliding_counts(True), None)
    expected = window_rows(whole.on_batch(first)[0])
    expected += window_rows(whole.on_batch(rest)[0])
    expected += window_rows(whole.on_eof()[0])
    assert [row for row in expected if row[0] in (4.0, 6.0, 8.0)] == [
        (4.0, 14.0, 2, 9 + 13, True),
        (6.0, 16.0, 4, 9 + 14 + 13 + 9.5, True),
        (8.0, 18.0, 4, 9 + 14 + 13 + 9.5, True),
    ]
    logic = Logic(sliding_counts(before), None)
    got = window_rows(logic.on_batch(first)[0])
    snapshot = pickle.loads(pickle.dumps(logic.snapshot()))
    assert bool(snapshot["panes"]) is before
    resumed = Logic(sliding_counts(after), snapshot)
    got += window_rows(resumed.on_batch(rest)[0])
    got += window_rows(resumed.on_eof()[0])
    assert got == expected
    assert resumed.panes == {} and resumed.wins == {}


def test_an_aggregator_failure_under_skip_and_halt() -> None:
    events = [hit("a", s, amount=13.0 if s == 3 else 1.0) for s in range(6)]

    def build(on_error: Any) -> Pipeline:
        return (
            Pipeline("agg_policy")
            .read(sources.memory(events))
            .key_by(lambda e: e.user)
            .window(windows.tumbling(seconds=10))
            .aggregate(n=agg.count(), total=Shaky(), on_error=on_error)
            .write(sinks.memory("o"))
        )

    skipped = build("skip").run()
    assert skipped.reconciles and skipped.skipped == 1 and skipped.dead == 0
    assert [r.n for r in skipped["o"]] == [5]
    with pytest.raises(PipelineHalted, match=r"halted at step 'aggregate_tumbling_10s_n_total'"):
        build("halt").run()


class Tick(Event):
    user: str
    amount: int


def _tick(rng: Any, i: int) -> Tick:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    user = f"u{i // 3 % 4}"  # every user in both partitions
    return Tick(user=user, amount=i, id=f"t{i}", time=t0 + timedelta(milliseconds=10 * i))


class _BrokenMerge(agg.Aggregator):
    def create(self) -> int:
        return 0

    def add(self, acc: int, value: Any, ts: float, event: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        raise ValueError("merge is broken")

    def result(self, acc: int) -> int:
        return acc


class _BrokenResult(_BrokenMerge):
    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int) -> int:
        raise ZeroDivisionError("no result")


def _windowed(aggregator: agg.Aggregator, on_error: Any = "dead_letter") -> Pipeline:
    return (
        Pipeline("broken")
        .read(sources.generate(_tick, count=4_000, partitions=2))  # interleaved
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=5))
        .aggregate(n=aggregator, on_error=on_error)
        .write(sinks.memory("w"))
    )


def test_a_failing_merge_on_two_processes_becomes_dead_letters_per_event() -> None:
    # Partial windows are merged after the key exchange only on several
    # processes: each event of a partial that cannot be merged is a dead
    # letter, named by its id; nothing is lost and the counts reconcile.
    result = _windowed(_BrokenMerge()).run(processes=2)
    assert result.reconciles
    merged = sum(w.n for w in result["w"])
    dead = [d for d in result.dead_letters if d.error_type == "ValueError"]
    assert dead and all("could not merge the partial window" in d.message for d in dead)
    assert all("merge is broken" in d.message for d in dead)
    ids = {json.loads(d.payload)["id"] for d in dead}
    assert merged + len(ids) == 4_000 and len(ids) == len(dead)
    with pytest.raises(PipelineHalted, match=r"halted at step 'aggregate_tumbling_5s_n'") as info:
        _windowed(_BrokenMerge(), on_error="halt").run(processes=2)
    assert "merge is broken" in str(info.value.__cause__)
    skipped = _windowed(_BrokenMerge(), on_error="skip").run(processes=2)
    assert skipped.reconciles and skipped.skipped == len(ids)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_result_becomes_a_dead_letter_per_window(processes: int) -> None:
    result = _windowed(_BrokenResult()).run(processes=processes)
    assert result["w"] == [] and result.reconciles
    assert len(result.dead_letters) == 4 * 8  # 4 users, 8 windows of 5 s each
    assert {d.error_type for d in result.dead_letters} == {"ZeroDivisionError"}
    assert all("could not be made" in d.message for d in result.dead_letters)


class _Kept(agg.Aggregator):
    """Keeps the amounts in a list inside a tuple, changed in place (a user's choice)."""

    def create(self) -> tuple[int, list[int]]:
        return (0, [])

    def add(self, acc: Any, value: Any, ts: float, event: Any) -> Any:
        acc[1].append(event.amount)
        return (acc[0] + 1, acc[1])

    def merge(self, a: Any, b: Any) -> Any:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, acc: Any) -> int:
        return len(acc[1])


@pytest.mark.parametrize("processes", [1, 2])
def test_each_window_gets_its_own_accumulator_from_create(processes: int) -> None:
    # Every window of every key holds 125 events (5 s of events 10 ms apart,
    # 4 users): the kept values equal the count, on one process or several.
    result = (
        Pipeline("kept")
        .read(sources.generate(_tick, count=4_000, partitions=2))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=5))
        .aggregate(n=agg.count(), kept=_Kept())
        .write(sinks.memory("w"))
        .run(processes=processes)
    )
    rows = result["w"]
    assert len(rows) == 32 and all(w.kept == w.n for w in rows)
    assert sum(w.n for w in rows) == 4_000


# Present-day epochs, where float `%` on epoch seconds misplaces events:
#
#   ms after 2026-11-30T00:00:00   0    5   10   15   20  ...  100  105
#   tumbling 10 ms                [0, 10)  [10, 20)  ...  [100, 110)
#   sliding 10 ms every 5 ms      [-5, 5) [0, 10) [5, 15) [10, 20) ...
NOW = datetime(2026, 11, 30, tzinfo=timezone.utc)


def _stamped(offsets_us: list[int]) -> list[Tick]:
    return [
        Tick(user="u", amount=i, id=f"t{i}", time=NOW + timedelta(microseconds=us))
        for i, us in enumerate(offsets_us)
    ]


@pytest.mark.parametrize(
    ("window", "size_us"),
    [
        (windows.tumbling(milliseconds=10), 10_000),
        (windows.tumbling(milliseconds=1), 1_000),
        (windows.tumbling(0.0005), 500),  # sub-millisecond
    ],
)
def test_short_tumbling_windows_hold_exactly_their_events(window: Any, size_us: int) -> None:
    offsets = sorted({k * 250 for k in range(2_000)} | {10_000, 100_000, 100_001, 99_999})
    events = _stamped(offsets)
    result = (
        Pipeline("short")
        .read(sources.memory(events, schema=Tick, batch_size=7))
        .key_by(lambda e: e.user)
        .window(window)
        .aggregate(ids=agg.collect("id"), n=agg.count())
        .write(sinks.memory("w"))
        .run()
    )
    by_id = {e.id: e for e in events}
    assert sum(w.n for w in result["w"]) == len(events)
    assert len({w.id for w in result["w"]}) == len(result["w"])  # one result per window
    for w in result["w"]:
        start_us = round((w.start - NOW).total_seconds() * 1e6)
        assert start_us % size_us == 0 and w.end - w.start == timedelta(microseconds=size_us)
        for event_id in w.ids:
            assert w.start <= by_id[event_id].time < w.end, (event_id, w.start, w.end)


def test_short_sliding_windows_give_one_result_per_window_with_every_event() -> None:
    offsets = [k * 1_000 for k in range(200)]  # an event each millisecond
    events = _stamped(offsets)
    result = (
        Pipeline("short")
        .read(sources.memory(events, schema=Tick, batch_size=7))
        .key_by(lambda e: e.user)
        .window(windows.sliding(milliseconds=10, every=0.005))
        .aggregate(ids=agg.collect("id"))
        .write(sinks.memory("w"))
        .run()
    )
    rows = result["w"]
    assert len({w.id for w in rows}) == len(rows)
    starts = sorted(round((w.start - NOW).total_seconds() * 1e6) for w in rows)
    assert starts == list(range(-5_000, 200_000, 5_000))
    by_id = {e.id: e for e in events}
    seen: dict[str, int] = {}
    for w in rows:
        assert w.end - w.start == timedelta(milliseconds=10)
        assert sorted(w.ids) == sorted(e.id for e in events if w.start <= e.time < w.end)
        for event_id in w.ids:
            assert w.start <= by_id[event_id].time < w.end
            seen[event_id] = seen.get(event_id, 0) + 1
    assert seen == {e.id: 2 for e in events}  # each event in both of its windows


def test_window_sizes_are_whole_microseconds() -> None:
    with pytest.raises(ValueError, match=r"tumbling window size must be a whole number of mic"):
        windows.tumbling(1.5e-6)
    with pytest.raises(ValueError, match=r"sliding window every must be a whole number of mic"):
        windows.sliding(seconds=1, every=3.5e-6)


def _with_one_from_the_far_future() -> list[Tick]:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = [
        Tick(user=f"u{i % 3}", amount=1, id=f"t{i}", time=t0 + timedelta(seconds=i))
        for i in range(600)
    ]
    events[100] = Tick(user="u0", amount=1, id="far", time=t0.replace(year=2926))
    return events


def test_an_event_from_the_far_future_is_a_dead_letter_and_moves_no_watermark() -> None:
    def run(clock: Any) -> Any:
        keyed = (
            Pipeline("future")
            .read(sources.memory(_with_one_from_the_far_future(), schema=Tick, batch_size=10))
            .key_by(lambda e: e.user)
            .window(windows.tumbling(seconds=60), clock=clock)
            .aggregate(n=agg.count())
        )
        return (keyed.write(sinks.memory("w")) | keyed.late.write(sinks.memory("late"))).run()

    result = run(windows.event_time())  # the default bound: one year ahead of the wall clock
    assert result["late"] == [] and result.reconciles
    assert sum(w.n for w in result["w"]) == 599
    [letter] = result.dead_letters
    assert (letter.kind, letter.error_type, letter.step) == (
        "future",
        "FutureEvent",
        "aggregate_tumbling_60s_n",
    )
    assert "event time 2926-01-01T00:00:00+00:00 is" in letter.message
    assert "beyond the clock's max_future (3.1536e+07 s)" in letter.message
    unbounded = run(windows.event_time(max_future=None))  # what an unbounded clock does
    assert len(unbounded["late"]) >= 490  # nearly every later event


def test_max_future_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"event_time max_future must be positive"):
        windows.event_time(max_future=0)


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _old_tick(rng: Any, i: int) -> Tick:
    return Tick(user=f"u{i % 3}", amount=i, id=f"t{i}", time=EPOCH + timedelta(seconds=i))


def _stalls(e: Tick) -> Tick:
    if e.id == "t180":  # partition 0's 91st event: one slow call (an enrichment, a retry)
        time.sleep(1.5)
    return e


@pytest.mark.parametrize(("workers", "processes"), [(1, 1), (2, 1), (1, 2)])
def test_a_slow_step_does_not_make_its_partition_idle(workers: int, processes: int) -> None:
    keyed = (
        Pipeline("slow")
        .read(sources.generate(_old_tick, count=200, partitions=2, batch_size=10))
        .map(_stalls)
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10), clock=windows.event_time(idle_timeout=0.3))
        .aggregate(n=agg.count())
    )
    result = (keyed.write(sinks.memory("w")) | keyed.late.write(sinks.memory("late"))).run(
        workers=workers, processes=processes
    )
    assert result["late"] == [] and result.dead_letters == []
    assert sum(w.n for w in result["w"]) == 200 and len(result["w"]) == 60


class _QuietReader(Reader):
    """Partition 'late' has nothing to read for a second, then its events."""

    def __init__(self, partition: str, step: str) -> None:
        self.partition = partition
        self.step = step
        self.start = time.monotonic()
        self.done = False

    def next_chunk(self) -> Chunk | None:
        if self.done:
            raise StopIteration
        if self.partition == "late" and time.monotonic() - self.start < 1.0:
            return None  # nothing to read yet
        self.done = True
        offset = 0 if self.partition == "busy" else 1
        events = [_old_tick(None, 2 * i + offset) for i in range(50)]
        return Chunk(events, self.step, self.partition)

    def position(self) -> bool:
        return self.done


class _Quiet(Source):
    label = "quiet"

    def partitions(self) -> list[str]:
        return ["busy", "late"]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        return _QuietReader(partition, step)


def test_a_partition_that_has_read_nothing_never_gives_the_wall_clock() -> None:
    # Events of 1970: a watermark taken from today's wall clock would call
    # every event of the partition that starts late "late".
    keyed = (
        Pipeline("quiet")
        .read(_Quiet())
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=10), clock=windows.event_time(idle_timeout=0.3))
        .aggregate(n=agg.count())
    )
    result = (keyed.write(sinks.memory("w")) | keyed.late.write(sinks.memory("late"))).run(
        workers=2
    )
    assert result["late"] == [] and sum(w.n for w in result["w"]) == 100


def _readings() -> list[Tick]:
    # An event a second; one in 500 arrives 10 minutes late (its time is old).
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(10_000):
        at = t0 + timedelta(seconds=i) - (timedelta(minutes=10) if i % 500 == 499 else timedelta())
        out.append(Tick(user=f"u{i % 5}", amount=i, id=f"t{i}", time=at))
    return out


def _reference(events: list[Tick], delay: float, size: float) -> tuple[Any, set[str]]:
    """Per event: late if behind its partition's newest time before it, minus the delay."""
    newest = -math.inf
    windows_: dict[tuple[str, float], int] = {}
    late: set[str] = set()
    for e in events:
        ts = e.time.timestamp()
        if ts < newest - delay:
            late.add(e.id)
            continue
        newest = max(newest, ts)
        start = ts - ts % size
        windows_[(e.user, start)] = windows_.get((e.user, start), 0) + 1
    return windows_, late


@pytest.mark.parametrize("batch_size", [1, 7, 100, 1_000])
def test_lateness_is_judged_event_by_event_whatever_the_batch_size(batch_size: int) -> None:
    events = _readings()
    keyed = (
        Pipeline("readings")
        .read(sources.memory(events, schema=Tick, batch_size=batch_size))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=60), clock=windows.event_time(max_delay=30))
        .aggregate(n=agg.count())
    )
    result = (keyed.write(sinks.memory("w")) | keyed.late.write(sinks.memory("late"))).run()
    expected_windows, expected_late = _reference(events, 30.0, 60.0)
    assert {e.id for e in result["late"]} == expected_late and len(expected_late) == 20
    got = {(w.key, w.start.timestamp()): w.n for w in result["w"]}
    assert got == expected_windows


def late_split(window: Any, seconds: list[float], batch: int, *, combine: bool = True) -> Any:
    """Run key 'a' at these event times (max_delay 0); return (windows table, late ids)."""
    events = [hit("a", s) for s in seconds]
    results = (
        Pipeline("late")
        .read(sources.memory(events, batch_size=batch))
        .key_by(lambda e: e.user)
        .window(window, clock=windows.event_time("time", max_delay=0))
        .aggregate(n=agg.count(), total=agg.sum("amount"), combine=combine)
    )
    r = (results.write(sinks.memory("out")) | results.late.write(sinks.memory("late"))).run()
    assert r.reconciles and r.open_windows == 0
    return table(r["out"], "n"), [e.id for e in r["late"]]


@pytest.mark.parametrize("batch", [1, 2, 100])
@pytest.mark.parametrize("combine", [True, False])
def test_an_event_behind_the_watermark_joins_its_tumbling_window_while_open(
    batch: int, combine: bool
) -> None:
    # After 15 s the watermark is 15: 12 s is behind it, but its window [10, 20)
    # is still open, so it joins it; 8 s's window [0, 10) has closed: late.
    got, late = late_split(windows.tumbling(seconds=10), [0, 15, 12, 8], batch, combine=combine)
    assert got == [("a", 0, 10, 1), ("a", 10, 20, 2)]
    assert late == ["a@8"]


@pytest.mark.parametrize("batch", [1, 2, 100])
def test_an_event_behind_the_watermark_joins_only_its_sliding_windows_still_open(
    batch: int,
) -> None:
    # Windows of 10 s every 5 s. After 13 s the watermark is 13: 6 s belongs to
    # [0, 10) (closed) and [5, 15) (open): it joins [5, 15) only. 2 s belongs to
    # [-5, 5) and [0, 10), both closed: it is late, and only then.
    got, late = late_split(windows.sliding(seconds=10, every=5), [0, 13, 6, 2], batch)
    assert got == [
        ("a", -5, 5, 1),
        ("a", 0, 10, 1),
        ("a", 5, 15, 2),
        ("a", 10, 20, 1),
    ]
    assert late == ["a@2"]


@pytest.mark.parametrize("batch", [1, 2, 100])
def test_an_event_behind_the_watermark_extends_a_session_while_its_own_gap_is_open(
    batch: int,
) -> None:
    # Gap 5. After 20 s the watermark is 20: 16 s's own gap [16, 21) reaches past
    # it, so it joins and extends the session of 20 s to [16, 25). 14 s's own gap
    # [14, 19) has passed: late (judged on its own gap, so the verdict never
    # depends on which other partitions' events came first).
    got, late = late_split(windows.session(seconds=5), [10, 20, 16, 14], batch)
    assert got == [("a", 10, 15, 1), ("a", 16, 25, 2)]
    assert late == ["a@14"]


def test_two_events_exactly_one_gap_apart_are_two_sessions() -> None:
    got, late = late_split(windows.session(seconds=5), [0, 5, 10.5], 100)
    assert got == [("a", 0, 5, 1), ("a", 5, 10, 1), ("a", 10.5, 15.5, 1)] and late == []


def test_a_session_closes_one_gap_after_its_end() -> None:
    logic = Logic(
        spec(windows.session(seconds=5), windows.event_time(max_delay=0), parts=["s/a"]), None
    )
    out, _ = logic.on_batch([Marked("s/a", 10.0, False, [("k", 10.0, hit("k", 10))])])
    assert out == []
    # The watermark passes the session's end (15): an event behind it whose own
    # gap reaches past it could still extend the session, so it stays open.
    out, _ = logic.on_batch([Marked("s/a", 17.0, False, [("j", 17.0, hit("j", 17))])])
    assert out == []
    out, _ = logic.on_batch(
        [Marked("s/a", 19.0, False, [("j", 19.0, hit("j", 19)), ("k", 14.5, hit("k", 14.5))])]
    )
    assert out == []  # 14.5 s's gap reaches 19.5: it extends k's session to [10, 19.5)
    out, _ = logic.on_batch([Marked("s/a", 25.0, False, [])])
    [(tag, result)] = out
    assert tag == "r" and (result.key, result.n) == ("k", 2)
    assert (result.start.timestamp(), result.end.timestamp()) == (10.0, 19.5)


def test_a_ttl_for_ever_runs_and_a_window_too_long_for_dates_is_refused() -> None:
    hits = [hit("u1", 0), hit("u2", 1), hit("u1", 2)]
    keyed = Pipeline("p").read(sources.memory(hits), name="read").key_by(lambda h: h.user)
    # A ttl past the year 9999 ("for ever") never wakes the step: it used to stop
    # the run asking the clock for a date it cannot hold.
    running = keyed.aggregate(n=agg.count(), emit="final", ttl=1e12)
    result = running.write(sinks.memory("out")).run()
    assert sorted((r.key, r.n) for r in result["out"]) == [("u1", 2), ("u2", 1)]
    counted = keyed.dispatch({Hit: stateful(lambda n, h: (n + 1, n + 1), initial=int, ttl=1e12)})
    result = counted.write(sinks.memory("out")).run()
    assert sorted(result["out"]) == [1, 1, 2] and result.reconciles
    for make in (
        lambda: windows.tumbling(days=400_000),
        lambda: windows.sliding(seconds=1e11, every=1e10),
        lambda: windows.session(gap=1e11),
    ):
        with pytest.raises(
            ValueError, match=r"at most 1000 years; .* dates end with the year 9999"
        ):
            make()
    assert windows.tumbling(days=365_000).size == 365_000 * 86400  # 999 years


class Mixed(Event):
    user: str = "u"
    tag: Any = "a"
    amount: Any = 1


@pytest.mark.parametrize(
    "shape",
    ["tumbling", "sliding", "session", "count", "running", "combined"],
)
def test_an_event_one_aggregator_cannot_take_is_in_no_result(shape: str) -> None:
    # The second event's amount cannot be summed, the third's tag cannot be
    # counted as distinct (a list): each is a dead letter, and its values are
    # in no accumulator, not even in those that add in place and come first.
    events = [
        Mixed(tag="a", amount=1, time=T0, id="e1"),
        Mixed(tag="b", amount="x", time=T0 + timedelta(seconds=1), id="e2"),
        Mixed(tag=["c"], amount=2, time=T0 + timedelta(seconds=2), id="e3"),
        Mixed(tag="d", amount=3, time=T0 + timedelta(seconds=3), id="e4"),
    ]
    aggs = {
        "tags": agg.collect("tag"),
        "top": agg.top_k("tag", 5),
        "n": agg.count(),
        "q": agg.quantile("amount", 0.5),
        "distinct": agg.count_distinct("tag"),
        "total": agg.sum("amount"),
    }
    keyed = Pipeline("p").read(sources.memory(events), name="read").key_by(lambda e: e.user)
    shaped: Any = {
        "tumbling": lambda: keyed.window(windows.tumbling(seconds=60)),
        "sliding": lambda: keyed.window(windows.sliding(seconds=60, every=30)),
        "session": lambda: keyed.window(windows.session(seconds=5)),
        "count": lambda: keyed.window(windows.count(10)),
        "running": lambda: keyed,
        "combined": lambda: keyed.window(windows.tumbling(seconds=60)),
    }[shape]()
    counted = shaped.aggregate(**aggs, **({"emit": "final"} if shape == "running" else {}))
    result = counted.write(sinks.memory("out")).run(processes=2 if shape == "combined" else 1)
    # e2: the quantile cannot take "x" (text); e3: top_k cannot count a list.
    assert {json.loads(d.payload)["id"]: d.error_type for d in result.dead_letters} == {
        "e2": "TypeError",
        "e3": "TypeError",
    }
    assert result["out"], "no window closed"
    for r in result["out"]:
        assert r.tags == ["a", "d"] and r.top == [("a", 1), ("d", 1)]
        assert (r.n, r.distinct, r.total) == (2, 2, 4)
    assert result.reconciles


def test_an_infinite_value_for_a_quantile_is_a_dead_letter_that_no_result_holds() -> None:
    events = [
        Mixed(tag="a", amount=1.0, time=T0, id="e1"),
        Mixed(tag="b", amount=float("inf"), time=T0 + timedelta(seconds=1), id="e2"),
    ]
    counted = (
        Pipeline("p")
        .read(sources.memory(events), name="read")
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=60))
        .aggregate(tags=agg.collect("tag"), q=agg.quantile("amount", 0.5))
    )
    result = counted.write(sinks.memory("out")).run()
    (letter,) = result.dead_letters
    assert json.loads(letter.payload)["id"] == "e2" and letter.error_type == "ValueError"
    assert "quantile(amount, 0.5) cannot place nan or an infinite value" in letter.message
    [window] = result["out"]
    assert window.tags == ["a"] and window.q == pytest.approx(1.0, rel=0.01)
    assert result.reconciles


@pytest.mark.parametrize("shape", ["tumbling", "running", "combined"])
def test_a_value_no_max_can_order_is_a_dead_letter_wherever_it_comes(shape: str) -> None:
    # nan and None: a max took one that came first (then kept it: nan compares
    # false) and passed over one that came later, and a None that came first
    # was held as "no value" while a later one failed: the result and the dead
    # letters depended on the order of the events. A quantile's sketch counted
    # nan as a zero. Each is now a dead letter in any order.
    nan = float("nan")
    values = [nan, None, 4.0, 2.0, 9.0]
    seen = set()
    for order in itertools.permutations(range(len(values))):
        events = [
            Mixed(amount=values[i], time=T0 + timedelta(seconds=n), id=f"e{i}")
            for n, i in enumerate(order)
        ]
        keyed = Pipeline("p").read(sources.memory(events), name="read").key_by(lambda e: e.user)
        shaped = keyed if shape == "running" else keyed.window(windows.tumbling(seconds=60))
        aggs = {
            "hi": agg.max("amount"),
            "lo": agg.min("amount"),
            "q": agg.quantile("amount", 0.5),
        }
        counted = shaped.aggregate(**aggs, **({"emit": "final"} if shape == "running" else {}))
        result = counted.write(sinks.memory("out")).run(processes=2 if shape == "combined" else 1)
        [r] = result["out"]
        dead = sorted(json.loads(d.payload)["id"] for d in result.dead_letters)
        seen.add((r.hi, r.lo, round(r.q, 6), tuple(dead)))
        assert result.reconciles
        if shape == "combined":
            break  # (two processes: one order is enough)
    assert len(seen) == 1, seen
    hi, lo, q, dead = seen.pop()
    assert (hi, lo, dead) == (9.0, 2.0, ("e0", "e1"))
    assert q == pytest.approx(4.0, rel=0.01)


def test_thousands_of_open_sessions_of_one_key_merge_exactly_and_resume_from_any_order() -> None:
    # One key holds thousands of sessions open (a long max_delay): an event
    # finds the sessions it overlaps by bisection, and one that bridges two
    # merges them. A snapshot of an earlier evflow, whose sessions of a key
    # are in no order, resumes to the same result.
    gap = 2.0
    times = [i * 3.0 for i in range(3000)] + [i * 3.0 + 1.5 for i in range(0, 3000, 7)]
    random.Random(5).shuffle(times)
    expected: list[tuple[float, float, int]] = []
    for ts in sorted(times):
        if expected and ts < expected[-1][1]:
            start, end, n = expected[-1]
            expected[-1] = (start, max(end, ts + gap), n + 1)
        else:
            expected.append((ts, ts + gap, 1))
    assert any(n > 2 for _, _, n in expected)  # bridging events merged sessions

    def run(resume: bool) -> list[tuple[float, float, int]]:
        make = spec(windows.session(seconds=gap), windows.event_time(max_delay=1e6), parts=["s/a"])
        logic = Logic(make, None)
        out: list[Any] = []
        for at in range(0, len(times), 500):
            chunk = [("k", ts, hit("k", ts)) for ts in times[at : at + 500]]
            out += logic.on_batch([Marked("s/a", max(times[: at + 500]), False, chunk)])[0]
            if resume and at == 2000:
                snap = logic.snapshot()
                random.Random(1).shuffle(snap["wins"]["k"])
                logic = Logic(make, snap)
        out += logic.on_eof()[0]
        return [(r.start.timestamp(), r.end.timestamp(), r.n) for _, r in out]

    assert sorted(run(False)) == expected
    assert sorted(run(True)) == expected


def early_counts(*, seconds: float, rate: float, every: float, name: str | None = None) -> Any:
    """Count 40 hits of one user (``rate`` a second) per window, with early results."""

    def make(rng: random.Random, i: int) -> Hit:
        return hit("ada", i, amount=1.0)

    return (
        Pipeline("early")
        .read(sources.generate(make, count=40, batch_size=1, rate=rate))
        .key_by(lambda e: e.user)
        .window(windows.tumbling(seconds=seconds))
        .aggregate(n=agg.count(), emit="early", every=every, name=name)
    )


def test_early_results_come_before_the_final_one_and_say_so() -> None:
    stream = early_counts(seconds=1000, rate=100, every=0.05)
    result = stream.write(sinks.memory("out")).run()
    early = [r for r in result["out"] if not r.final]
    final = [r for r in result["out"] if r.final]
    assert len(early) >= 3 and [r.n for r in final] == [40]
    assert result["out"][-1].final  # the final result comes last
    ns = [r.n for r in early]
    assert ns == sorted(ns) and all(0 < n < 40 or n == 40 for n in ns)
    assert len({r.id for r in result["out"]}) == len(result["out"])  # every id its own
    assert result.counts[stream.step].early == len(early) and result.reconciles
    with pytest.raises(ValueError, match="needs every="):
        Pipeline("x").read(sources.memory([])).key_by(str).window(
            windows.tumbling(seconds=1)
        ).aggregate(n=agg.count(), emit="early")


def test_an_aggregate_of_early_results_is_refused_until_the_final_ones_are_kept() -> None:
    per_second = early_counts(seconds=10, rate=200, every=0.01, name="tens")
    hint = r"early results of 'tens' \(emit='early'\).*Hint: .*\.filter\(lambda r: r\.final\)"
    with pytest.raises(ValueError, match=hint):
        per_second.key_by(lambda r: r.key, name="k").aggregate(total=agg.sum("n"))
    with pytest.raises(ValueError, match=hint):
        per_second.inspect(print).window_all(windows.tumbling(seconds=100)).aggregate(
            total=agg.sum("n")
        )
    finals = per_second.filter(lambda r: r.final, name="finals")
    total = finals.window_all(windows.tumbling(seconds=100)).aggregate(total=agg.sum("n"))
    result = total.write(sinks.memory("out")).run()
    assert [r.total for r in result["out"]] == [40]  # each event once
    assert result.early > 0 and result.reconciles


def test_a_join_of_early_results_is_refused_and_a_table_of_them_keeps_the_latest() -> None:
    # Joined as they were, each early result was a pair of its own: 6 pairs for one window.
    per_second = early_counts(seconds=1000, rate=200, every=0.01, name="tens")
    counts = per_second.key_by(lambda r: r.key, name="k")
    users = per_second.pipeline.read(
        sources.memory([hit("ada", 0, amount=1.0)]), name="users"
    ).key_by(lambda e: e.user, name="user")
    hint = r"pair the early results of 'tens' \(emit='early'\) on its (left|right) side"
    for make in (
        lambda: counts.join(users, window=windows.tumbling(seconds=1000)),
        lambda: users.join(counts, between=(timedelta(0), timedelta(hours=1))),
        lambda: counts.join(users.as_table()),
        lambda: counts.join(counts.as_table()),  # its left side, though its table may be
    ):
        with pytest.raises(ValueError, match=hint + r".*\.filter\(lambda r: r\.final\)"):
            make()
    latest = users.join(counts.as_table(), name="latest")  # each user's count as of its time
    result = latest.write(sinks.memory("out")).run()
    assert len(result["out"]) == 1 and result.reconciles
    finals = per_second.filter(lambda r: r.final).key_by(lambda r: r.key, name="kf")
    paired = finals.join(users, window=windows.tumbling(seconds=1000), name="paired")
    result = paired.write(sinks.memory("out")).run()
    assert [(j.left.n, j.right.user) for j in result["out"]] == [(40, "ada")]


def test_early_results_a_filter_or_a_map_lets_through_are_dead_letters_not_counted_again() -> None:
    # Refused at build only through steps that pass records on as they are: after a
    # filter on something else, or a map that keeps the results, every early result
    # was summed again (40 events counted as 334 in one run).
    # A map that made new records of them (an event of another class, a tuple) hid them
    # from the aggregate: 40 events summed to 92. Such a map dead-letters them itself.
    per_second = early_counts(seconds=10, rate=200, every=0.01, name="tens")
    for passed, at in (
        (per_second.filter(lambda r: r.n > 0, name="some"), "total"),
        (per_second.map(lambda r: r.model_copy(update={"n": r.n}), name="copied"), "copied"),
        (
            per_second.map(lambda r: Hit(user=r.key, amount=r.n, time=r.time), name="remade"),
            "remade",
        ),
    ):
        total = passed.window_all(windows.tumbling(seconds=100), name="all").aggregate(
            total=agg.sum("amount" if at == "remade" else "n"), name="total"
        )
        result = total.write(sinks.memory("out")).run()
        assert [r.total for r in result["out"]] == [40]  # each event once
        letters = result.dead_letters
        assert result.early == len(letters) > 0 and result.reconciles
        assert {(d.step, d.kind, d.error_type) for d in letters} == {
            (at, "validation", "EarlyResult")
        }
        assert "an early result of 'tens'" in letters[0].message
        if at != "total":
            assert (
                f"reached map {at!r}, whose records go on to aggregate 'total', which would count "
                f"what it makes of it again" in letters[0].message
            )
            assert letters[0].message.endswith(f".filter(lambda r: r.final), before {at!r}.")
        assert all(not json.loads(d.payload)["final"] for d in letters)
    # The final ones kept first, or a map whose records reach no aggregate: no dead letter.
    finals = per_second.filter(lambda r: r.final, name="finals").map(
        lambda r: Hit(user=r.key, amount=r.n, time=r.time), name="remade"
    )
    total = finals.window_all(windows.tumbling(seconds=100)).aggregate(total=agg.sum("amount"))
    result = total.write(sinks.memory("out")).run()
    assert [r.total for r in result["out"]] == [40] and not result.dead_letters
    shown = per_second.map(lambda r: (r.n, r.final), name="shown").write(sinks.memory("out")).run()
    assert [n for n, final in shown["out"] if final] == [10] * 4 and len(shown["out"]) > 4
    assert not shown.dead_letters and shown.reconciles


def test_a_session_whose_start_moves_goes_on_numbering_its_early_results() -> None:
    # Gap 5, a day of delay (nothing closes before the end), early results at
    # every batch. 10 opens [10, 15); 9 moves its start to 9; 17 opens
    # [17, 22); 13 bridges both into [9, 22). The session keeps one count of
    # its early results through each move, and none is left once it closed.
    make = spec(
        windows.session(seconds=5),
        windows.event_time(max_delay=86_400),
        parts=["s/a"],
        emit="early",
        every=1e-9,
    )
    logic = Logic(make, None)
    out: list[Any] = []
    for ts in (10.0, 9.0, 17.0, 13.0):
        out += logic.on_batch([Marked("s/a", 17.0, False, [("k", ts, hit("k", ts))])])[0]
    out += logic.on_eof()[0]
    results = [r for tag, r in out if tag == "r"]
    early = [(r.start.timestamp(), r.id.rsplit("/", 1)[1], r.n) for r in results if not r.final]
    assert early == [
        (10.0, "early-1", 1),
        (9.0, "early-2", 2),
        (9.0, "early-3", 2),
        (17.0, "early-1", 1),
        (9.0, "early-4", 4),
    ]
    [final] = [r for r in results if r.final]
    assert (final.start.timestamp(), final.end.timestamp(), final.n) == (9.0, 22.0, 4)
    assert logic.versions == {}  # nothing kept for the starts the session had


def test_a_long_session_holds_one_closing_entry_and_closes_when_due() -> None:
    # 10,000 events of one key, a second apart, gap 5, with 20,000 s of
    # allowed delay: one session that grows with every event while the
    # watermark stays behind it. It holds one closing entry (moved on when it
    # comes up), not one per event, and closes once the watermark reaches
    # its end (last event + gap) plus the gap, with every event.
    clock = windows.event_time(max_delay=20_000)
    logic = Logic(spec(windows.session(seconds=5), clock, parts=["s/a"]), None)
    out: list[Any] = []
    for at in range(0, 10_000, 100):
        chunk = [("k", float(ts), hit("k", ts)) for ts in range(at, at + 100)]
        out += logic.on_batch([Marked("s/a", float(at + 99), False, chunk)])[0]
        assert len(logic.heap) == 1
    assert [r for tag, r in out if tag == "r"] == []
    for when in (30_000.0, 30_008.0):  # the watermark at 10,000 and 10,008
        out = logic.on_batch([Marked("s/a", when, False, [("j", when, hit("j", when))])])[0]
        assert [r for tag, r in out if tag == "r"] == []
        assert len(logic.heap) <= 3  # the session's entry and one per "j" session
    done = logic.on_batch([Marked("s/a", 30_009.0, False, [("j", 30_009.0, hit("j", 1))])])[0]
    [session] = [r for tag, r in done if tag == "r"]
    assert (session.key, session.n, session.start.timestamp(), session.end.timestamp()) == (
        "k",
        10_000,
        0.0,
        10_004.0,
    )


class Stamped(Event):
    user: str
    at: float = 0.0


def test_an_event_whose_windows_no_date_can_hold_is_a_dead_letter_and_the_run_goes_on() -> None:
    # Placeholder dates (year 1, year 9999) and epoch seconds out of range used
    # to stop the run when a window's bound or a result's date was made; now
    # each such event is a validation dead letter at the step, holding it, and
    # the others' results are exact. An event at a date the step's windows can
    # hold is taken, however close to the ends.
    utc = timezone.utc
    first = datetime(1, 1, 1, 0, 30, tzinfo=utc)
    year_0 = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5)))  # 0000-12-31 UTC
    last = datetime(9999, 12, 31, 23, 30, tzinfo=utc)
    no_bound = windows.event_time(max_future=None)

    def run(stream: Any, events: list[Event]) -> Any:
        keyed = Pipeline("ends").read(sources.memory(events)).key_by(lambda e: e.user)
        result = stream(keyed).write(sinks.memory("o")).run()
        assert result.reconciles
        refused = {json.loads(d.payload)["id"] for d in result.dead_letters}
        for letter in result.dead_letters:
            assert (letter.kind, letter.error_type) == ("validation", "EventTimeOutOfRange")
            assert "is out of the dates a window or result can have" in letter.message
        return result["o"], refused

    def hits(*times: datetime) -> list[Event]:
        return [Hit(user="a", time=t, id=f"e{i}") for i, t in enumerate(times)]

    def count(window: Any) -> Any:
        return lambda s: s.window(window, clock=no_bound).aggregate(n=agg.count())

    out, refused = run(count(windows.sliding(hours=2, every=timedelta(hours=1))), hits(T0, first))
    assert refused == {"e1"} and [(r.n, r.start) for r in out] == [
        (1, T0 - timedelta(hours=1)),
        (1, T0),
    ]
    out, refused = run(count(windows.tumbling(hours=1)), hits(first, last, T0))
    assert refused == {"e1"} and sorted(r.start for r in out) == [
        datetime(1, 1, 1, tzinfo=utc),
        T0,
    ]
    out, refused = run(count(windows.session(hours=1)), hits(first, last, year_0))
    assert refused == {"e1", "e2"} and [(r.start, r.end) for r in out] == [
        (first, first + timedelta(hours=1))
    ]
    between = (timedelta(hours=-1), timedelta(hours=1))
    out, refused = run(
        lambda s: s.join(s, between=between, clock=no_bound), hits(first, T0, last, T0)
    )
    assert refused == {"e0", "e2"} and len(out) == 4  # e1 and e3 meet themselves and each other
    # A process step's results are dated its events' times: epoch seconds a
    # datetime cannot hold are refused (1.7e12: milliseconds read as seconds),
    # 2.5e11 s (the year 9891) is taken.
    at_seconds = windows.event_time(lambda e: e.at, max_future=None)
    values = (10.0, 1e20, -1e20, 1.7e12, 2.5e11)
    seconds = [Stamped(user="a", at=v, id=f"e{i}") for i, v in enumerate(values)]
    out, refused = run(
        lambda s: s.process(lambda st, e, ctx: ctx.emit(e.id), initial=list, clock=at_seconds),
        seconds,
    )
    assert refused == {"e1", "e2", "e3"} and out == ["e0", "e4"]
    out, refused = run(
        lambda s: s.process(lambda st, e, ctx: ctx.emit(e.id), initial=list), hits(year_0, T0)
    )
    assert refused == {"e0"} and out == ["e1"]


class Mixed2(Event):
    user: str = "a"
    q: float
    v: frozenset[int]


def test_a_merge_that_fails_leaves_every_window_as_it_was() -> None:
    # A quantile merges its sketches in place; a max of two sets neither of
    # which holds the other cannot merge. Session a (q 1, 1; v {1}) and session
    # b (q 100 x3; v {2}) are bridged by an event at 6 s: the merge fails, so
    # that event is a dead letter, and session a's median is its own (it was
    # b's, with two events counted, reconciling).
    one, two = frozenset({1}), frozenset({2})

    def at(second: float) -> datetime:
        return T0 + timedelta(seconds=second)

    values = [
        (0, 1, one),
        (1, 1, one),
        (11, 100, two),
        (12, 100, two),
        (13, 100, two),
        (6, 50, one),
    ]
    events = [Mixed2(q=q, v=v, time=at(t), id=f"e{t}") for t, q, v in values]
    sessions = (
        Pipeline("bridge")
        .read(sources.memory(events))
        .key_by(lambda e: e.user)
        .window(windows.session(seconds=6), clock=windows.event_time(max_delay=100))
        .aggregate(med=agg.quantile("q", 0.5), top=agg.max("v"), n=agg.count())
    )
    result = sessions.write(sinks.memory("o")).run()
    found = [(r.start, r.med, r.top, r.n) for r in result["o"]]
    assert found == [
        (at(0), pytest.approx(1, rel=0.02), one, 2),
        (at(11), pytest.approx(100, rel=0.02), two, 3),
    ]
    [letter] = result.dead_letters
    assert json.loads(letter.payload)["id"] == "e6" and letter.error_type == "ValueError"
    assert result.reconciles
    # The same for a partial window (aggregated where it was read) merged into
    # a window that holds another: the partial's events are dead letters.
    aggs = {"med": agg.quantile("q", 0.5), "top": agg.max("v")}
    make = spec(windows.tumbling(seconds=60), windows.event_time(), parts=["s/a"], aggs=aggs)
    logic = Logic(make, None)

    def partial(q: float, v: Any, ids: list[str]) -> tuple[str, float, float, list[Any], list[str]]:
        accs = [g.create() for g in make.aggs]
        for _ in ids:
            accs = [g.add(a, x, 0.0, None) for g, a, x in zip(make.aggs, accs, (q, v), strict=True)]
        return ("k", 0.0, 60.0, accs, ids)

    first = Marked("s/a", 10.0, False, [], partials=[partial(1.0, one, ["p1", "p2"])])
    second = Marked("s/a", 20.0, False, [], partials=[partial(100.0, two, ["p3", "p4", "p5"])])
    out = logic.on_batch([first])[0] + logic.on_batch([second])[0] + logic.on_eof()[0]
    letters = [x for tag, x in out if tag == "d"]
    assert sorted(json.loads(d.payload)["id"] for d in letters) == ["p3", "p4", "p5"]
    [window] = [x for tag, x in out if tag == "r"]
    assert (window.med, window.top) == (pytest.approx(1, rel=0.02), one)


class Totals(WindowResult):
    hits: int = 0
    top: float | None = None


def test_results_into_a_named_class_read_back_as_that_class(tmp_path: Path) -> None:
    # Their type was the step's name, so Totals.model_validate refused each one
    # (Totals' type is the literal "totals") and a file of them read back as dead letters.
    hits = [hit(p, i, amount=i) for i, p in enumerate("abab")]
    keyed = Pipeline("into").read(sources.memory(hits)).key_by(lambda h: h.user)
    windowed = keyed.window(windows.tumbling(minutes=1)).aggregate(
        into=Totals, hits=agg.count(), top=agg.max("amount"), name="per_minute"
    )
    running = keyed.aggregate(into=Totals, hits=agg.count(), top=agg.max("amount"), name="so_far")
    flow = windowed.write(sinks.jsonl(tmp_path / "w.jsonl"), name="w") | running.write(
        sinks.jsonl(tmp_path / "r.jsonl"), name="r"
    )
    assert flow.run().reconciles
    for name, step in (("w", "per_minute"), ("r", "so_far")):
        back = (
            Pipeline(f"back_{name}")
            .read(sources.jsonl(tmp_path / f"{name}.jsonl", schema=Totals))
            .write(sinks.memory("o"))
            .run()
        )
        assert back.dead_letters == []
        rows = back["o"]
        assert {r.type for r in rows} == {"totals"}
        assert all(r.id.startswith(f"{step}/") for r in rows)
        final = {r.key: (r.hits, r.top) for r in rows}
        assert final == {"a": (2, 2.0), "b": (2, 3.0)}


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_a_clock_on_a_field_reads_a_dicts_key_as_the_aggregators_do(batch_size: int) -> None:
    # dicts (what a map makes of JSON, say): event_time("ts") refused every one as
    # having no 'ts' attribute, while agg.sum("n") read the key.
    def stamp(i: int) -> Any:
        moment = T0 + timedelta(seconds=20 * i)
        return [moment.isoformat(), moment.isoformat().replace("+00:00", "Z"), moment][i % 3]

    rows: list[Any] = [{"k": "a", "n": i, "ts": stamp(i)} for i in range(9)]
    rows.insert(4, {"k": "a", "n": 100, "ts": (T0 + timedelta(seconds=70)).timestamp()})

    def windowed(given: list[Any], clock: Any) -> Any:
        return (
            Pipeline("dicts")
            .read(sources.memory(given, batch_size=batch_size))
            .key_by(lambda r: r.user if isinstance(r, Hit) else r["k"])
            .window(windows.tumbling(minutes=1), clock=clock)
            .aggregate(n=agg.count())
            .write(sinks.memory("o"))
            .run()
        )

    result = windowed(rows, windows.event_time("ts"))
    # 0, 20, 40 s | 60, 70 (epoch seconds), 80, 100 s | 120, 140, 160 s
    assert [(r.start, r.n) for r in result["o"]] == [
        (T0, 3),
        (T0 + timedelta(minutes=1), 4),
        (T0 + timedelta(minutes=2), 3),
    ]
    assert result.reconciles and not result.dead_letters
    # events and dicts in one stream: an event's attribute, a dict's key
    mixed = [hit("a", 1), hit("a", 2), {"k": "a", "time": T0 + timedelta(seconds=65)}]
    mixed += [hit("a", 130), {"k": "a"}, {"k": "a", "time": T0 + timedelta(days=3650)}]
    result = windowed(mixed, windows.event_time())
    assert [(r.start, r.n) for r in result["o"]] == [
        (T0, 2),
        (T0 + timedelta(minutes=1), 1),
        (T0 + timedelta(minutes=2), 1),
    ]
    future, missing = sorted(result.dead_letters, key=lambda d: d.kind)
    assert missing.error_type == "MissingEventTime" and "its 'time' key" in missing.message
    assert future.kind == "future"  # a dict dated ten years on: refused
    assert result.reconciles and result.read == len(mixed)
    # the first dict after events dated beyond the clock's reach: refused, counted once
    result = windowed(
        [hit("a", 1), {"k": "a", "time": T0 + timedelta(days=3650)}], windows.event_time()
    )
    [step] = [c for name, c in result.counts.items() if name.startswith("aggregate")]
    assert (step.received, step.dead, step.aggregated) == (2, 1, 1), step
    assert [d.kind for d in result.dead_letters] == ["future"] and result.reconciles


class Sale(Event):
    user: str
    amount: float


class SaleAt(Event):
    user: str
    amount: float
    time: AwareDatetime = Field(validation_alias=AliasChoices("time", "timestamp"))


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_an_event_dated_by_its_time_default_during_the_run_is_a_dead_letter(
    tmp_path: Path, batch_size: int
) -> None:
    # Records with a `timestamp` key, read with a class that has no such field: each
    # event's time took its default, the moment it was parsed.
    lines = [
        json.dumps({"user": "a", "amount": i, "timestamp": f"2026-03-01T00:0{i}:30Z"})
        for i in range(5)
    ]
    path = tmp_path / "sales.jsonl"
    path.write_text("\n".join(lines) + "\n")

    def per_minute(schema: Any, **reading: Any) -> Any:
        return (
            Pipeline("sales")
            .read(sources.jsonl(str(path), schema=schema, batch_size=batch_size), **reading)
            .key_by(lambda s: s.user)
            .window(windows.tumbling(minutes=1))
            .aggregate(n=agg.count(), total=agg.sum("amount"))
            .write(sinks.memory("o"))
            .run()
        )

    result = per_minute(Sale)
    assert result["o"] == [] and result.reconciles
    assert [d.error_type for d in result.dead_letters] == ["DefaultEventTime"] * 5
    letter = result.dead_letters[0]
    assert letter.kind == "validation" and letter.step == "aggregate_tumbling_60s_n_total"
    assert "this Sale was made during the run without one" in letter.message
    assert "AliasChoices('time', \"timestamp\")" in letter.message
    # named where the records keep it: one window a minute, as the records say
    result = per_minute(SaleAt)
    assert [(r.start, r.n, r.total) for r in result["o"]] == [
        (T0 + timedelta(minutes=i), 1, i) for i in range(5)
    ]
    assert result.reconciles and not result.dead_letters


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_events_a_step_makes_without_a_time_are_refused_by_the_steps_on_event_time(
    batch_size: int,
) -> None:
    hits = [hit("a", 10 * i) for i in range(12)]

    def windowed(make: Any, clock: Any = None) -> Any:
        return (
            Pipeline("made")
            .read(sources.memory(hits, batch_size=batch_size))
            .map(make)
            .key_by(lambda s: s.user)
            .window(windows.tumbling(minutes=1), **({} if clock is None else {"clock": clock}))
            .aggregate(n=agg.count())
            .write(sinks.memory("o"))
            .run()
        )

    # forgot time=h.time: dated when the map ran, every one refused
    result = windowed(lambda h: Sale(id=h.id, user=h.user, amount=h.amount))
    assert result["o"] == [] and result.reconciles
    assert {d.error_type for d in result.dead_letters} == {"DefaultEventTime"}
    assert len(result.dead_letters) == len(hits)
    # carried on: two windows of six
    result = windowed(lambda h: Sale(id=h.id, user=h.user, amount=h.amount, time=h.time))
    assert [r.n for r in result["o"]] == [6, 6] and not result.dead_letters
    # on the wall clock, its own time is what is asked for
    result = windowed(
        lambda h: Sale(id=h.id, user=h.user, amount=h.amount), windows.processing_time()
    )
    assert sum(r.n for r in result["o"]) == len(hits) and not result.dead_letters
    # a clock's own function reads what it chooses
    result = windowed(
        lambda h: Sale(id=h.id, user=h.user, amount=h.amount),
        windows.event_time(lambda s: T0 + timedelta(seconds=s.amount)),
    )
    assert [r.n for r in result["o"]] == [len(hits)] and not result.dead_letters


def counted_after(stream: Any) -> Any:
    """Run a count per user and minute of what ``stream`` carries (step ``per_minute``)."""
    return (
        stream.key_by(lambda s: s.user, name="sale_user")
        .window(windows.tumbling(minutes=1))
        .aggregate(n=agg.count(), name="per_minute")
        .write(sinks.memory("o"))
        .run()
    )


def test_a_join_and_a_process_step_refuse_events_dated_by_their_time_default() -> None:
    hits = [hit("a", 10 * i) for i in range(6)]
    made = Pipeline("steps").read(sources.memory(hits)).key_by(lambda h: h.user)
    undated = made.map(lambda h: Sale(id=h.id, user=h.user, amount=h.amount)).key_by(
        lambda s: s.user
    )
    joined = made.join(undated, window=windows.tumbling(minutes=1), how="left")
    result = joined.write(sinks.memory("o")).run()
    # each hit unmatched (its partner refused), each sale a dead letter at the join
    assert [j.right for j in result["o"]] == [None] * 6 and result.reconciles
    assert [d.error_type for d in result.dead_letters] == ["DefaultEventTime"] * 6
    assert {d.step for d in result.dead_letters} == {"join_window"}

    # a select that builds an event without time=: refused by the window after the join
    built = made.join(
        made.map(lambda h: h, name="same").key_by(lambda h: h.user, name="same_user"),
        between=(0, 0),
        select=lambda a, b: Sale(id=f"{a.id}+{b.id}", user=a.user, amount=a.amount),
    )
    result = counted_after(built)
    assert result["o"] == [] and result.reconciles
    assert [(d.step, d.error_type) for d in result.dead_letters] == [
        ("per_minute", "DefaultEventTime")
    ] * 6

    def total(state: float, sale: Sale, ctx: Any) -> float:
        ctx.emit(state + sale.amount)
        return state + sale.amount

    result = undated.process(total, initial=float).write(sinks.memory("o")).run()
    assert result["o"] == [] and result.reconciles
    assert [d.error_type for d in result.dead_letters] == ["DefaultEventTime"] * 6

    def alert(state: int, h: Hit, ctx: Any) -> int:
        ctx.emit(Sale(user=h.user, amount=state))  # no time=ctx.time
        return state + 1

    result = counted_after(made.process(alert, initial=int))
    assert result["o"] == [] and result.reconciles
    assert [(d.step, d.error_type) for d in result.dead_letters] == [
        ("per_minute", "DefaultEventTime")
    ] * 6


class SelfDated(Event):
    """Dated by its own code from a field of epoch milliseconds, after validation."""

    user: str
    ms: int

    @model_validator(mode="after")
    def _dated(self) -> SelfDated:
        object.__setattr__(self, "time", datetime.fromtimestamp(self.ms / 1000, timezone.utc))
        return self


class Posted(Event):
    user: str
    ms: int

    def model_post_init(self, context: Any) -> None:
        object.__setattr__(self, "time", datetime.fromtimestamp(self.ms / 1000, timezone.utc))


@pytest.mark.parametrize("cls", [SelfDated, Posted])
def test_an_event_whose_own_code_sets_its_time_is_not_taken_for_one_of_the_default(
    cls: type[Event],
) -> None:
    # Live records dated now by the class itself: their time is not in pydantic's
    # fields set, and not the default either (all but the first were refused).
    now = int(time.time() * 1000) + 60_000
    lines = [json.dumps({"user": "a", "ms": now + 100 * i}) for i in range(5)]
    result = counted_per_user(sources.memory(lines, schema=cls), windows.tumbling(hours=1))
    assert sum(r.n for r in result["o"]) == 5 and not result.dead_letters


def test_events_made_without_a_time_before_the_run_keep_their_time() -> None:
    # made in the program before the run: dated once, the same on every read of them
    sales = [Sale(id=f"s{i}", user="a", amount=i) for i in range(4)]
    result = counted_per_user(sources.memory(sales), windows.tumbling(days=1))
    assert sum(r.n for r in result["o"]) == 4 and not result.dead_letters


def test_epoch_milliseconds_and_text_without_an_offset_are_dead_letters_that_say_so() -> None:
    now = time.time()
    rows = [
        {"k": "a", "ts": int(now * 1000)},
        {"k": "a", "ts": "2026-01-01T00:00:00"},
        {"k": "a", "ts": "yesterday"},
        {"k": "a", "ts": now},
    ]
    result = (
        Pipeline("ms")
        .read(sources.memory(rows))
        .key_by(lambda r: r["k"])
        .window(windows.tumbling(minutes=1), clock=windows.event_time("ts"))
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
        .run()
    )
    assert [r.n for r in result["o"]] == [1]
    ms, naive, word = result.dead_letters
    assert ms.kind == "future" and "it reads as epoch milliseconds" in ms.message
    assert "clock=windows.event_time(lambda r: r['ts'] / 1000)" in ms.message
    assert naive.kind == "validation" and "has no timezone" in naive.message
    assert "end it with Z or an offset such as +02:00" in naive.message
    assert "'yesterday' is not an ISO 8601 date and time" in word.message
    assert result.reconciles


@pytest.mark.parametrize(("partitions", "batch_size", "workers"), [(1, 4, 1), (4, 1, 2), (2, 1, 1)])
def test_first_and_last_of_events_of_one_time_do_not_depend_on_arrival(
    partitions: int, batch_size: int, workers: int
) -> None:
    # Of events of the same time, first and last took whichever arrived first, so the
    # result changed with the partitions, batch size and workers (both gave 5 or 3).
    def run(rows: list[dict[str, Any]]) -> tuple[Any, Any]:
        result = (
            Pipeline("ties")
            .read(sources.memory(rows, partitions=partitions, batch_size=batch_size))
            .key_by(lambda r: r["k"])
            .window(windows.tumbling(minutes=1), clock=windows.event_time("t"))
            .aggregate(f=agg.first("v"), l=agg.last("v"))
            .write(sinks.memory("o"))
            .run(workers=workers)
        )
        [only] = result["o"]
        return only.f, only.l

    plain = [{"k": "a", "t": T0, "v": v} for v in (5, 3, 9, 1)]
    assert run(plain) == (1, 9)  # no ids: the least and the greatest value
    named = [{"k": "a", "t": T0, "v": v, "id": i} for v, i in ((5, "c"), (3, "d"), (9, "a"))]
    assert run(named) == (9, 3)  # by id: "a" first, "d" last
    mixed = [{"k": "a", "t": T0, "v": v} for v in (2, "x", 1.5, 1.0, 1)]
    assert run(mixed) == (1.0, "x")  # numbers by value (1.0 before 1: by type name), then text


def mixed_rows(
    rng: random.Random, keys: str, seconds: int, values: list[Any], n: int
) -> list[dict[str, Any]]:
    """``n`` dict rows of the keys, times in the first ``seconds`` (in order), values drawn."""
    rows = [
        {
            "k": rng.choice(keys),
            "t": (T0 + timedelta(seconds=rng.randrange(0, seconds))).isoformat(),
            "v": rng.choice(values),
        }
        for _ in range(n)
    ]
    return sorted(rows, key=lambda r: r["t"])


def test_collect_max_min_and_top_k_do_not_depend_on_the_schedule() -> None:
    # collect kept arrival order (which the batch size changes where partitions
    # interleave), and max, min and top_k kept whichever of 1 and 1.0 came first.
    rows = mixed_rows(random.Random(4), "ab", 120, [1, 2.0, 3, 2, 1.0], 120)
    aggregated = (
        Pipeline("order")
        .read(sources.memory(rows, partitions=3))
        .key_by(lambda r: r["k"])
        .window(windows.tumbling(minutes=1), clock=windows.event_time("t", max_delay=30))
        .aggregate(c=agg.collect("v"), mx=agg.max("v"), mn=agg.min("v"), top=agg.top_k("v", 3))
        .write(sinks.memory("o"))
    )
    found = testing.explore(aggregated, seed=1, runs=5)
    results = list(found.outputs["memory_o"])
    assert len(results) == 4  # two keys, two minutes
    for line in results:
        record = json.loads(line)
        assert record["mx"] == 3 and record["mn"] in (1, 1.0)
        assert isinstance(record["mn"], float)  # 1.0 and 1 are level: the float's type name first
    direct = sorted((r["k"], r["t"][:16], r["v"]) for r in rows)
    for line in results:
        record = json.loads(line)
        minute = record["start"][:16]
        expected = [v for k, t, v in direct if k == record["key"] and t == minute]
        assert sorted(record["c"]) == sorted(expected)
        counts = Counter(expected)  # 1 and 1.0 are one value, 2 and 2.0 too
        assert sorted(map(tuple, record["top"])) == sorted(counts.most_common(3))
        assert all(isinstance(v, float) for v, _ in record["top"] if v != 3)  # float before int


class Line(Event):
    user: str
    qty: int
    price: Decimal


def test_sums_keep_the_kind_of_number_summed_in_the_result_and_the_file(tmp_path: Path) -> None:
    """An int sum stays an int (past 2**53 too), a Decimal sum a Decimal, in memory and JSON."""
    big = 10**30
    lines = [
        Line(user="a", qty=big + i, price=Decimal("0.10"), time=T0, id=f"l{i}") for i in range(3)
    ]
    rows = [line.model_dump() for line in lines]  # the same as dicts: types not known
    sums = {
        "s": agg.sum("qty"),
        "p": agg.sum("price"),
        "mp": agg.mean("price"),
        "mq": agg.mean("qty"),
    }
    expected = (3 * big + 3, Decimal("0.30"), Decimal("0.10"), float(big + 1))
    for records, schema in ((lines, Line), (rows, None)):
        out = tmp_path / f"{schema is None}.jsonl"
        p = Pipeline("sums").read(sources.memory(records, schema=schema))
        window = p.key_by(lambda e: e.user if isinstance(e, Line) else e["user"]).window(
            windows.tumbling(seconds=60), clock=windows.event_time("time")
        )
        results = window.aggregate(**sums)
        run = (results.write(sinks.memory("o")) | results.write(sinks.jsonl(out))).run()
        (r,) = run["o"]
        assert (r.s, r.p, r.mp, r.mq) == expected
        assert [type(v) for v in (r.s, r.p, r.mp)] == [int, Decimal, Decimal]
        written = json.loads(out.read_text())
        assert (written["s"], written["p"]) == (3 * big + 3, "0.30")
        assert Decimal(written["mp"]) == Decimal("0.10")
        fields = type(r).model_fields
        if schema is not None:  # the declared types say which
            assert (fields["s"].annotation, fields["p"].annotation) == (int, Decimal)
            assert (fields["mp"].annotation, fields["mq"].annotation) == (Decimal, float)


def test_a_window_over_sums_of_dicts_sums_them_again() -> None:
    rows = [{"u": "a", "n": i, "time": (T0 + timedelta(seconds=i)).isoformat()} for i in range(20)]
    per_10s = (
        Pipeline("twice")
        .read(sources.memory(rows))
        .key_by(lambda r: r["u"])
        .window(windows.tumbling(seconds=10), clock=windows.event_time("time"))
        .aggregate(n=agg.sum("n"))
    )
    total = per_10s.window_all(windows.tumbling(seconds=60)).aggregate(n=agg.sum("n"))
    (r,) = total.write(sinks.memory("o")).run()["o"]
    assert r.n == sum(range(20)) and type(r.n) is int


class Counted(WindowResult):
    hits: str = ""  # a count is no text
    top: float | None = None


def test_a_named_result_class_whose_field_cannot_hold_its_aggregate_is_refused() -> None:
    """A count into a str field was written as a number its class forbids (a warning, or worse)."""
    keyed = Pipeline("into").read(sources.memory([hit("a", 1)])).key_by(lambda h: h.user)
    window = keyed.window(windows.tumbling(minutes=1))
    with pytest.raises(TypeError, match=r"field 'hits' is str, but count\(\) gives int.*hits: int"):
        window.aggregate(into=Counted, hits=agg.count(), top=agg.max("amount"))
    # what fits is taken: an int into a float, a float field's max into float | None
    window.aggregate(into=Totals, hits=agg.count(), top=agg.max("amount"), name="fits")
    window.aggregate(into=Totals, hits=agg.count(), top=agg.count(), name="int_into_float")
    rows = [{"u": "a", "n": 1, "time": T0.isoformat()}]  # dicts: any kind of number may come
    by_user = Pipeline("dicts").read(sources.memory(rows)).key_by(lambda r: r["u"])
    by_user.window(windows.tumbling(minutes=1), clock=windows.event_time("time")).aggregate(
        into=Totals, hits=agg.sum("n"), top=agg.max("n")
    )


def test_a_mean_of_one_int_is_a_float_in_memory_and_in_the_file(tmp_path: Path) -> None:
    """The mean of one int was that int: written to a file under ``float | Decimal`` it warned."""
    rows = [
        {"u": u, "n": n, "time": (T0 + timedelta(seconds=i)).isoformat()}
        for i, (u, n) in enumerate([("a", 7), ("b", 2), ("b", 3)])
    ]
    means = (
        Pipeline("means")
        .read(sources.memory(rows))
        .key_by(lambda r: r["u"])
        .window(windows.tumbling(seconds=60), clock=windows.event_time("time"))
        .aggregate(m=agg.mean("n"), s=agg.sum("n"))
    )
    out = tmp_path / "means.jsonl"
    run = (means.write(sinks.memory("o")) | means.write(sinks.jsonl(out))).run()
    assert run.reconciles and not run.dead_letters
    assert sorted((r.key, r.m, type(r.m), r.s) for r in run["o"]) == [
        ("a", 7.0, float, 7),
        ("b", 2.5, float, 5),
    ]
    assert sorted((d["m"], d["s"]) for d in map(json.loads, out.read_text().splitlines())) == [
        (2.5, 5),
        (7.0, 7),
    ]


def test_values_that_do_not_compare_or_show_apart_do_not_depend_on_the_schedule() -> None:
    """A number and a text (no order), Decimal 1 and 1.0 (equal, shown apart): placed alike.

    ``max`` refused whichever of a number and a text came second, and equal
    Decimals kept the first to arrive, so the results (and which events were
    dead letters) followed the schedule.
    """
    pool: list[Any] = [1, "1", 2.0, "a", Decimal("1"), Decimal("1.0"), -0.0, 0.0]
    rows = mixed_rows(random.Random(9), "k", 30, pool, 60)
    aggregated = (
        Pipeline("apart")
        .read(sources.memory(rows, partitions=3))
        .key_by(lambda r: r["k"])
        .window(windows.tumbling(seconds=10), clock=windows.event_time("t", max_delay=30))
        .aggregate(
            mx=agg.max("v"),
            mn=agg.min("v"),
            top=agg.top_k("v", 3),
            c=agg.collect("v"),
            f=agg.first("v"),
        )
        .write(sinks.memory("o"))
    )
    found = testing.explore(aggregated, seed=2, runs=6, vary=("batch", "workers", "partitions"))
    assert not found.dead  # nothing refused: every value has its place
    results = [json.loads(line) for line in found.outputs["memory_o"]]
    assert len(results) == 3
    for r in results:
        assert r["mx"] == "a" or "a" not in r["c"]  # text after numbers (by type name)


class Made(Event):
    k: str
    n: int


def test_events_a_map_makes_without_ids_are_placed_and_named_alike_on_every_run() -> None:
    """Such events get random ids: ties of first, last and collect, and the ids of results
    made from them (a running aggregate's, a join's), went by those, changing from run to run.
    """
    source = [Made(id=f"s{i}", k="a", n=i, time=T0 + timedelta(seconds=i // 4)) for i in range(20)]
    p = Pipeline("made")
    remade = p.read(sources.memory(source)).map(
        lambda s: Made(k=s.k, n=s.n, time=s.time), name="remake"
    )
    keyed = remade.key_by(lambda m: m.k)
    windowed = keyed.window(windows.tumbling(seconds=10)).aggregate(
        f=agg.first("n"), l=agg.last("n"), c=agg.collect("n")
    )
    pairs = keyed.join(keyed, between=(0, 0), name="pairs").map(lambda j: (j.id, j.left.n))
    flow = windowed.write(sinks.memory("w")) | pairs.write(sinks.memory("j"))
    found = testing.explore(flow, runs=3, vary=("batch",))  # a second run on one schedule too
    (window,) = [json.loads(line) for line in found.outputs["memory_w"]]
    # of events of one time: the least value first, the greatest last, values in order
    assert (window["f"], window["l"], window["c"]) == (0, 19, list(range(20)))
    joined = [json.loads(line) for line in found.outputs["memory_j"]]
    assert len(joined) == 5 * 16  # each second's 4 events with each other
    assert len({i for i, _ in joined}) == 80 and all(i.count("/%23") == 2 for i, _ in joined)
