"""The same pipeline on 1 and 2 workers gives the same multiset of outputs and counts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pipelines import Pipeline, sinks, sources
from tests.helpers import Purchase, View, multiset


def test_same_results_on_one_and_two_workers() -> None:
    events = [
        View(user=f"u{i % 7}") if i % 3 else Purchase(user=f"u{i % 5}", amount=i)
        for i in range(3000)
    ]
    routes = (
        Pipeline("w")
        .read(sources.memory(events, partitions=3, batch_size=100))
        .filter(lambda e: e.user != "u0")
        .forward(big=lambda e: getattr(e, "amount", 0) > 900, otherwise="rest")
    )
    p = routes.big.map(lambda e: e.amount).write(sinks.memory("big")) | routes.rest.write(
        sinks.memory("rest")
    )
    one, two = p.run(workers=1), p.run(workers=2)
    assert multiset(one["big"]) == multiset(two["big"]) and len(one["big"]) > 0
    assert multiset(one["rest"]) == multiset(two["rest"])
    assert {k: c for k, c in one.counts.items()} == {k: c for k, c in two.counts.items()}


def test_workers_must_be_a_positive_int() -> None:
    p = Pipeline("w").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"workers must be a positive int; got 0\. Hint:"):
        p.run(workers=0)
    # A snapshot interval that cannot work is refused with recovery or without.
    with pytest.raises(ValueError, match=r"snapshot_interval must be a positive, finite"):
        p.run(snapshot_interval=0)


def _worker_of_each_key(keys: list[str], workers: int) -> dict[str, int]:
    """Route ``keys`` through a bytewax stateful step on ``workers`` workers."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, cluster_main

    where: dict[str, int] = {}

    class Recorder(StatelessSinkPartition[tuple[str, None]]):
        def __init__(self, worker: int) -> None:
            self.worker = worker

        def write_batch(self, items: list[tuple[str, None]]) -> None:
            for key, _ in items:
                where[key] = self.worker

    class ByWorker(DynamicSink[tuple[str, None]]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Recorder:
            return Recorder(worker_index)

    flow = Dataflow("routes")
    keyed = op.input("keys", flow, TestingSource([(k, None) for k in keys]))
    held = op.stateful_map("hold", keyed, lambda state, value: (state, value))
    op.output("where", held, ByWorker())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return where


@pytest.mark.parametrize("workers", [2, 3, 4, 6, 8, 12, 16])
def test_key_buckets_spread_evenly_over_workers(workers: int) -> None:
    # Window and keyed-dispatch state lives in key buckets that the engine
    # routes to workers by a hash of their names: each worker must hold as
    # many as any other, give or take one (plain names "0".."31" put 6 on
    # one worker of 16 and none on two others).
    from collections import Counter

    from operators._keying import BUCKET_KEYS

    where = _worker_of_each_key(list(BUCKET_KEYS), workers)
    assert set(where) == set(BUCKET_KEYS)
    held = Counter(where.values())
    counts = [held.get(w, 0) for w in range(workers)]
    assert max(counts) - min(counts) <= 1, counts


def test_a_stage_that_only_writes_reads_one_chunk_at_a_time() -> None:
    from operators import RunContext, agg
    from pipelines._running.compile import compile_pipeline

    p = Pipeline("ra")
    plain = p.read(sources.memory(range(10)), name="plain").map(lambda n: n + 1)
    keyed = (
        p.read(sources.memory(range(10)), name="keyed")
        .key_by(lambda n: str(n % 2))
        .aggregate(n=agg.count())
    )
    both = plain.write(sinks.memory("a")) | keyed.write(sinks.memory("b"))
    compiled = compile_pipeline(both, RunContext("ra"))
    # In the order the sources were read: the plain one, then the keyed one.
    assert [s.read_ahead for s in compiled.sources] == [False, True]


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 6, 8, 16])
def test_a_bucket_per_worker_puts_one_on_each_worker(workers: int) -> None:
    # A run without a store keeps as many key buckets as workers (where they
    # divide 1680): the engine's routing must give each worker one of them.
    from operators._keying import BUCKET_KEYS, bucket_count

    names = list(BUCKET_KEYS[: bucket_count(workers)])
    where = _worker_of_each_key(names, workers)
    assert sorted(where.values()) == list(range(workers))


@pytest.mark.parametrize(
    ("workers", "store", "buckets"), [(1, False, 1), (2, False, 2), (1, True, 32)]
)
def test_keyed_steps_spread_keys_over_a_bucket_per_worker_unless_a_store_keeps_them(
    tmp_path: Any, workers: int, store: bool, buckets: int
) -> None:
    # Each bucket of a step on event time reports its watermark: the
    # buckets that did are the step's buckets. A run with a recovery store
    # keeps all 32, which it can resume over on any number of workers.
    from operators import agg, windows
    from pipelines._running.launch import run

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    buys = [
        Purchase(user=f"u{i % 50}", amount=i, time=t0 + timedelta(seconds=i), id=f"p{i}")
        for i in range(500)
    ]
    sums = (
        Pipeline("buckets")
        .read(sources.memory(buys, batch_size=20))
        .key_by(lambda p: p.user)
        .window(windows.tumbling(seconds=60))
        .aggregate(total=agg.sum("amount"), name="sums")
    )
    seen: list[Any] = []
    result = run(
        sums.write(sinks.memory("out")),
        workers=workers,
        monitor=seen.append,
        recovery=tmp_path / "store" if store else None,
    )
    assert len({key for step, key in seen[0].counters.marks if step == "sums"}) == buckets
    assert result.reconciles
    expected: dict[tuple[str, datetime], float] = {}
    for i in range(500):  # one buy a second, user i % 50, in the minute i // 60
        where = (f"u{i % 50}", t0 + timedelta(seconds=i // 60 * 60))
        expected[where] = expected.get(where, 0.0) + i
    assert sorted((r.key, r.start, r.total) for r in result["out"]) == sorted(
        (*where, total) for where, total in expected.items()
    )
