"""key_by: keys are checked strings; keyed streams."""

from __future__ import annotations

import pytest

from pipelines import Pipeline, sinks, sources


def test_key_by_checks_keys_are_strings() -> None:
    s = Pipeline("k").read(sources.memory([{"u": "a"}, {"u": 7}, {}]))
    result = s.key_by(lambda d: d["u"]).write(sinks.memory("out")).run()
    assert result["out"] == [{"u": "a"}]
    kinds = sorted((d.error_type, d.message.split(":")[0]) for d in result.dead_letters)
    assert kinds == [("KeyError", "'u'"), ("TypeError", "step 'key_by' (key_by)")]
    bad = next(d for d in result.dead_letters if d.error_type == "TypeError")
    assert "must return str; got int 7. Hint: convert it" in bad.message
    assert all(d.kind == "key_error" for d in result.dead_letters)
    assert result.reconciles


def test_the_key_function_is_called_once_per_event_before_a_keyed_step() -> None:
    from datetime import datetime, timedelta, timezone

    from operators import agg, windows
    from tests.helpers import Purchase

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    buys = [
        Purchase(user=f"u{i % 7}", amount=i, time=t0 + timedelta(seconds=i)) for i in range(1_000)
    ]
    calls: list[int] = []

    def user_of(e: Purchase) -> str:
        calls.append(1)
        return e.user

    keyed = Pipeline("k").read(sources.memory(buys, schema=Purchase)).key_by(user_of)
    windowed = keyed.window(windows.tumbling(seconds=100)).aggregate(n=agg.count())
    result = windowed.write(sinks.memory("w")).run()
    assert sum(w.n for w in result["w"]) == 1_000
    assert len(calls) == 1_000
    calls.clear()
    both = windowed.write(sinks.memory("w")) | keyed.aggregate(
        emit="final", name="totals", n=agg.count()
    ).write(sinks.memory("t"))
    result = both.run()
    assert sum(w.n for w in result["t"]) == 1_000 and len(calls) == 1_000


def test_running_aggregates_read_the_clock_once_per_list(monkeypatch: pytest.MonkeyPatch) -> None:
    import operators._keying as keying
    from operators import agg

    reads: list[int] = []
    real = keying.time.time

    class Clock:
        @staticmethod
        def time() -> float:
            reads.append(1)
            return real()

    monkeypatch.setattr(keying, "time", Clock)
    result = (
        Pipeline("r")
        .read(sources.memory([{"u": str(i % 3)} for i in range(5_000)], batch_size=1_000))
        .key_by(lambda r: r["u"])
        .aggregate(n=agg.count())
        .write(sinks.memory("o"))
        .run()
    )
    assert sum(r.n for r in result["o"]) == 5_000
    assert 0 < len(reads) <= 50  # a read per list of records, not per record


def test_a_key_no_utf8_holds_is_a_key_like_any_other_and_is_written() -> None:
    # Text decoded from bytes with "surrogateescape" (file names, raw input)
    # holds lone surrogates: such a key stopped the run when its bucket was
    # found, and such a result stopped it again in a jsonl sink.
    import json
    import tempfile
    from pathlib import Path

    from operators import Event, agg, windows

    class Named(Event):
        name: str

    raw = b"caf\xe9".decode("utf-8", "surrogateescape")  # latin-1 bytes, not UTF-8
    events = [Named(name=raw), Named(name="tea"), Named(name=raw)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.jsonl"
        for workers in (1, 2):
            counts = (
                Pipeline("names")
                .read(sources.memory(events))
                .key_by(lambda e: e.name)
                .window(windows.tumbling(minutes=1))
                .aggregate(n=agg.count())
            )
            result = (counts.write(sinks.memory("o")) | counts.write(sinks.jsonl(out))).run(
                workers=workers
            )
            assert sorted((r.key, r.n) for r in result["o"]) == [("caf\udce9", 2), ("tea", 1)]
            written = [json.loads(line) for line in out.read_text().splitlines()]
            assert sorted((w["key"], w["n"]) for w in written) == [("caf\udce9", 2), ("tea", 1)]
            assert result.reconciles and not result.dead_letters
