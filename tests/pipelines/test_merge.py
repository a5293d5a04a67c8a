"""merge and fan-out: several streams into one, one stream into several sinks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from operators import Event, agg, windows
from pipelines import Pipeline, sinks, sources, testing


def test_merge_interleaves_sources_and_keeps_counts() -> None:
    p = Pipeline("mg")
    a = p.read(sources.memory([1, 2, 3], name="a"))
    b = p.read(sources.memory([10, 20], name="b"))
    merged = a.merge(b.map(lambda x: x + 1)).filter(lambda x: x != 2)
    result = merged.write(sinks.memory("out")).run(workers=2)
    assert sorted(result["out"]) == [1, 3, 11, 21]
    assert result.read == 5 and result.counts["merge"].received == 5 and result.reconciles


def test_one_stream_written_twice_counts_the_copy() -> None:
    s = Pipeline("t").read(sources.memory([1, 2]))
    result = (s.write(sinks.memory("a")) | s.write(sinks.memory("b"))).run()
    assert sorted(result["a"]) == sorted(result["b"]) == [1, 2]
    # The read step handed on 2 records, each to two readers: "out" says 2, the
    # second reader's copies are counted apart (not as doubled out and created).
    step = result.counts["read_memory"]
    assert (step.out, step.created, step.copies) == (2, 0, 2)
    assert result.copies == 2 and result.written == 4 and result.reconciles


class Tick(Event):
    user: str
    n: int


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("shape", ["routes", "copies", "two_readers"])
def test_routes_merged_again_keep_their_partitions_order_for_event_time(shape: str) -> None:
    """A stream split and merged again went on route by route: with batches of more than one
    record, the records of the second route were behind the first's and most of them late.
    """
    ticks = [
        Tick(id=f"t{i}", user="a", n=i % 10, time=T0 + timedelta(seconds=i // 3))
        for i in range(150)
    ]

    def counted(batch_size: int) -> Pipeline:
        s = Pipeline("rejoin").read(sources.memory(ticks, batch_size=batch_size), name="src")
        if shape == "routes":
            routes = s.forward(big=lambda t: t.n > 6, otherwise="rest")
            merged = routes.big.map(lambda t: t.model_copy(update={"n": 100})).merge(routes.rest)
        elif shape == "copies":
            routes = s.forward(big=lambda t: t.n > 6, odd=lambda t: t.n % 2 == 1, mode="all")
            merged = routes.big.merge(routes.odd)
        else:
            merged = s.filter(lambda t: t.n > 6, name="big").merge(s.map(lambda t: t, name="all"))
        return (
            merged.key_by(lambda t: t.user)
            .window(windows.tumbling(seconds=10))
            .aggregate(c=agg.count())
            .write(sinks.memory("o"))
        )

    # per 10 s: 30 ticks, of which 9 have n of 7 to 9 and 15 an odd n (7 and 9 on both routes)
    per_window = {"routes": [30] * 5, "copies": [9 + 15] * 5, "two_readers": [9 + 30] * 5}[shape]
    for batch_size in (1, 7, 1000):
        result = counted(batch_size).run()
        assert not result.dead_letters and result.reconciles
        assert [r.c for r in sorted(result["o"], key=lambda r: r.start)] == per_window
    testing.explore(counted(1000), runs=4, vary=("batch", "workers", "crash"))
