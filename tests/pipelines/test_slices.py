"""Chunks larger than a stage's slice: the same records, counts and dead letters as small ones.

A stage pushes a chunk through its steps `SLICE` records at a time
(`operators._stage._push`); a chunk of the default size goes through whole.
These run chunks of 2,500 records, cut at the default slice and at a slice
of 7, against a direct computation.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import operators._stage
from operators import Context, Event, agg, windows
from pipelines import Pipeline, sinks, sources

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N = 3000
BATCH = 2500  # two chunks: one past two default slices, one of 500
#: Lines that are not JSON: first and last of a slice, of a chunk, of the file.
BROKEN = {1, 1024, 1025, 1030, 2048, 2049, 2500, 2501, 2999, 3000}


class Sale(Event):
    shop: str
    amount: int


def _line(n: int) -> str:
    if n in BROKEN:
        return '{"type": "sale", "shop": '
    at = (T0 + timedelta(seconds=n)).isoformat()
    return json.dumps({"type": "sale", "id": f"s{n}", "time": at, "shop": f"shop{n % 7}",
                       "amount": n % 13})  # fmt: skip


@pytest.fixture(params=[7, operators._stage.SLICE], ids=["slice_7", "default_slice"])
def slice_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    size: int = request.param
    monkeypatch.setattr(operators._stage, "SLICE", size)
    return size


def test_a_chunk_of_several_slices_keeps_order_counts_and_each_dead_letters_line(
    tmp_path: Path, slice_size: int
) -> None:
    path = tmp_path / "sales.jsonl"
    path.write_text("".join(_line(n) + "\n" for n in range(1, N + 1)))
    result = (
        Pipeline("slices")
        .read(sources.jsonl(path, schema=Sale, batch_size=BATCH), name="sales")
        .filter(lambda s: s.amount != 5, name="not_five")
        .map(lambda s: (s.id, 100 // (s.amount - 3)), name="share")  # amount 3 fails
        .write(sinks.memory("out"))
        .run()
    )
    good = [n for n in range(1, N + 1) if n not in BROKEN]
    assert result["out"] == [(f"s{n}", 100 // (n % 13 - 3)) for n in good if n % 13 not in (3, 5)]
    lines = {d.origin.line for d in result.dead_letters if d.kind == "parse" and d.origin}
    assert lines == BROKEN
    failed = sorted(json.loads(d.payload)["id"] for d in result.dead_letters
                    if d.kind == "user_error")  # fmt: skip
    assert failed == sorted(f"s{n}" for n in good if n % 13 == 3)
    assert result.counts["not_five"].filtered == sum(n % 13 == 5 for n in good)
    assert result.reconciles


def test_records_read_without_ids_are_named_by_their_offsets_across_slices(
    tmp_path: Path, slice_size: int
) -> None:
    path = tmp_path / "sales.jsonl"
    lines = [_line(n) for n in range(1, N + 1)]
    path.write_text("".join(line.replace('"id": "s', '"no": "s') + "\n" for line in lines))
    result = (
        Pipeline("slices")
        .read(sources.jsonl(path, schema=Sale, batch_size=BATCH), name="sales")
        .write(sinks.memory("out"))
        .run()
    )
    good = [n for n in range(1, N + 1) if n not in BROKEN]
    assert [s.id for s in result["out"]] == [f"sales/{path}/{n - 1}" for n in good]


def test_records_a_process_step_makes_keep_their_making_times_across_slices(
    slice_size: int,
) -> None:
    """A process step's results (each made at its event's time) go on in large chunks.

    A map after it runs over them slice by slice, each record with its own
    making time; the windows after it must be those of a direct count, on
    chunks of 2,500 as on chunks of 1. Every 13th event also makes a record
    dated 150 s before it: judged against its making, it is late for its window.
    """
    sales = [
        Sale(id=f"s{n}", time=T0 + timedelta(seconds=n), shop=f"shop{n % 7}", amount=n % 13)
        for n in range(N)
    ]

    def running(total: int, sale: Sale, ctx: Context[tuple[str, datetime, int]]) -> int:
        total += sale.amount
        ctx.emit((ctx.key, ctx.time, total))
        if sale.amount == 0:  # every 13th event
            ctx.emit((ctx.key, ctx.time - timedelta(seconds=150), -1))
        return total

    class Total(Event):
        shop: str
        total: int

    def windowed(batch: int) -> Counter[tuple[str, datetime]]:
        totals = (
            Pipeline("made")
            .read(sources.memory(sales, batch_size=batch))
            .key_by(lambda s: s.shop)
            .process(running, initial=int)
            .map(lambda r: Total(id=f"{r[0]}@{r[1]}", time=r[1], shop=r[0], total=r[2]))
            .key_by(lambda t: t.shop, name="again")
            .window(windows.tumbling(seconds=100))
            .aggregate(n=agg.count(), top=agg.max("total"))
        )
        got = totals.write(sinks.memory("out")).run()
        assert got.reconciles
        late = sorted(json.loads(d.payload)["id"] for d in got.dead_letters if d.kind == "late")
        assert late == sorted(
            f"{s.shop}@{s.time - timedelta(seconds=150)}" for s in sales if s.amount == 0
        )
        assert len(got.dead_letters) == len(late)
        out: list[Any] = got["out"]
        return Counter({(r.key, r.start): (r.n, r.top) for r in out})

    expected: dict[tuple[str, datetime], tuple[int, int]] = {}
    totals: Counter[str] = Counter()
    for sale in sales:
        totals[sale.shop] += sale.amount
        start = T0 + timedelta(seconds=int((sale.time - T0).total_seconds()) // 100 * 100)
        n, _ = expected.get((sale.shop, start), (0, 0))
        expected[(sale.shop, start)] = (n + 1, totals[sale.shop])
    assert windowed(BATCH) == Counter(expected)
    assert windowed(1) == Counter(expected)
