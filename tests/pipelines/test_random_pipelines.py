"""Random pipelines, each run under several schedules by `testing.explore`: every one agrees.

Chains drawn from a seed: a stateless step (filter, map, flat_map), routes split and merged
again, then a window (of any kind, with any aggregators, and a window over its results), a
process step with timers and ttl, or a join (windowed, interval, or with a table), over
events out of order by up to ``max_delay`` and some beyond it. The larger hunt this is the
small version of found aggregates that followed the arrival order, random ids that steered
results, and merged routes that made each other late.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from operators import Context, Event, Timer, agg, windows
from pipelines import Pipeline, Stream, sinks, sources, testing

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
#: How many random pipelines (``EVFLOW_RANDOM_PIPELINES=500`` for a longer hunt).
SEEDS = int(os.environ.get("EVFLOW_RANDOM_PIPELINES", "8"))


class Ev(Event):
    k: str
    n: int


def events(rng: random.Random, count: int, delay: int) -> list[Ev]:
    made = []
    for i in range(count):
        behind = rng.uniform(0, delay) + (
            rng.uniform(delay, delay + 20) if rng.random() < 0.1 else 0
        )
        at = T0 + timedelta(seconds=round(i * rng.choice([0.3, 1.3]) - behind, 3) + 100)
        made.append(Ev(id=f"e{i}", k=rng.choice("abc"), n=rng.randrange(20), time=at))
    return made


def running(total: int, e: Ev, ctx: Context[Any]) -> int:
    if total == 0:
        ctx.timer(ctx.time + timedelta(seconds=5))
    ctx.emit((e.k, e.n, total))
    return total + e.n


def fired(total: int, timer: Timer, ctx: Context[Any]) -> None:
    ctx.emit(("timer", timer.key, total))


def window_of(rng: random.Random) -> Any:
    return rng.choice(
        [
            windows.tumbling(seconds=10),
            windows.sliding(seconds=10, every=5),
            windows.session(seconds=3),
            windows.tumbling(seconds=7, align_to=3.5),
        ]
    )


AGGREGATES = {
    "c": agg.count,
    "s": lambda: agg.sum("n"),
    "m": lambda: agg.mean("n"),
    "mx": lambda: agg.max("n"),
    "f": lambda: agg.first("n"),
    "l": lambda: agg.last("n"),
    "col": lambda: agg.collect("n"),
    "top": lambda: agg.top_k("n", 2),
    "d": lambda: agg.count_distinct("n"),
}


def stateless(rng: random.Random, s: Stream[Any]) -> Stream[Any]:
    shape = rng.randrange(6)
    if shape == 1:
        return s.filter(lambda e: e.n % 3 != 0, name="thirds")
    if shape == 2:
        return s.map(lambda e: Ev(k=e.k, n=e.n + 1, time=e.time), name="remade")  # no id
    if shape == 3:
        return s.flat_map(lambda e: [e] * (e.n % 3), name="repeated")
    if shape == 4:
        routes = s.forward(hi=lambda e: e.n > 10, otherwise="lo", name="split")
        return routes.hi.map(lambda e: e.model_copy(update={"n": e.n * 2}), name="hi_twice").merge(
            routes.lo, name="rejoined"
        )
    if shape == 5:
        both = s.forward(hi=lambda e: e.n > 10, even=lambda e: e.n % 2 == 0, mode="all")
        return both.hi.merge(both.even, name="rejoined")
    return s


def content(late: Stream[Any]) -> Stream[Any]:
    """A late stream's events by their content: one a map made has a random id of its own."""
    return late.map(lambda e: (e.k, e.n, e.time.isoformat()))


def build(seed: int) -> tuple[Pipeline, int]:
    rng = random.Random(seed)
    delay = rng.choice([0, 2])
    clock = windows.event_time("time", max_delay=timedelta(seconds=delay))
    p = Pipeline("random")
    s = stateless(rng, p.read(sources.memory([]), name="src"))
    keyed = s.key_by(lambda e: e.k, name="by_k")
    kind = rng.randrange(3)
    outs: list[Stream[Any]] = []
    if kind == 0:
        names = rng.sample(sorted(AGGREGATES), 3)
        made = {name: AGGREGATES[name]() for name in names}
        results = keyed.window(window_of(rng), clock=clock).aggregate(**made, name="agg")
        outs += [results, content(results.late)]
        if "c" in names:
            outs.append(
                results.window_all(windows.tumbling(seconds=60), name="all").aggregate(
                    c=agg.sum("c"), name="sums"
                )
            )
    elif kind == 1:
        ttl = rng.choice([None, 3.0])
        outs.append(keyed.process(running, initial=int, on_timer=fired, ttl=ttl, clock=clock))
    else:
        odd = s.filter(lambda e: e.n % 2 == 1, name="odd").key_by(lambda e: e.k, name="odd_k")
        even = s.filter(lambda e: e.n % 2 == 0, name="even").key_by(lambda e: e.k, name="even_k")
        pick = rng.randrange(3)
        if pick == 0:
            joined = odd.join(even, window=window_of(rng), how="outer", clock=clock)
        elif pick == 1:
            joined = odd.join(even, between=(-3, 3), how="left", clock=clock)
        else:
            joined = odd.join(even.as_table(ttl=4.0), clock=clock)
        outs += [joined.map(lambda j: (j.key, j.id), name="ids"), content(joined.late)]
    flow: Pipeline | None = None
    for i, out in enumerate(outs):
        written = out.write(sinks.memory(f"o{i}"), name=f"w{i}")
        flow = written if flow is None else flow | written
    assert flow is not None
    return flow, delay


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_pipelines_give_one_result_under_every_schedule(seed: int) -> None:
    flow, delay = build(seed)
    input_ = events(random.Random(seed), 80, delay)
    found = testing.explore(
        flow,
        input_,
        partitions=2,
        seed=seed,
        runs=4,
        vary=("batch", "workers", "partitions", "crash"),
    )
    assert sum(sum(c.values()) for c in found.outputs.values()) > 0
