"""The benchmark scripts run and their variants agree (smoke runs, not timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "events", "expected", "extra"),
    [
        ("stateless_clickstream.py", 3000, "evflow speed vs python loop:", ()),
        ("windowed_clickstream.py", 4000, "evflow on 2 processes vs 1:", ()),
        ("dispatch_types.py", 2000, "1000 types: evflow", ()),
        ("scaling.py", 4000, "evflow speed vs bytewax on 2 processes:", ()),
        ("scaling.py", 4000, "shares     2 processes", ("--shares", "--skip-bytewax")),
        ("scaling.py", 4000, "of the bare loop's", ("--loop", "--skip-bytewax")),
        ("recovery_overhead.py", 4000, "evflow recovery cost (target <= 10%):", ()),
        ("windowed_join.py", 20000, "evflow speed vs bytewax join_window:", ()),
        ("sliding_windows.py", 5000, "evflow speed vs python loop:", ()),
        ("hot_key.py", 600, "interval join  evflow", ()),
        ("nexmark/run.py", 20000, "q8 ", ()),
        ("nexmark/breakdown.py", 20000, "evflow's keyed process step on its own:", ()),
        ("join_state.py", 0, "after the watermark passed the ttl: 0 states", ()),
        ("broker_throughput.py", 3000, "evflow speed vs the hand-written loop (NATS)", ("--nats",)),
    ],
)
def test_benchmark_runs_and_variants_agree(
    script: str, events: int, expected: str, extra: tuple[str, ...]
) -> None:
    size = ["--keys", "20000"] if script == "join_state.py" else ["--events", str(events)]
    rounds = [] if script == "join_state.py" else ["--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *size, *rounds, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    assert expected in done.stdout


def test_chaos_script_kills_resumes_and_checks() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--kills", "2", "--events", "6000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    assert (
        "2 runs killed with SIGKILL" in done.stdout
        and "none lost, none written twice" in done.stdout
    )


def test_nexmark_queries_in_evflow_stream_their_results_before_their_input_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Q3 to Q8 run as streaming queries: each writes results while its input is still
    being read (auctions close at their expiry, windows when the watermark passes them),
    not all at its end. A global aggregate, which can only answer at the end, shows the
    check telling the two apart."""
    from typing import Any

    from operators import agg
    from pipelines import Pipeline, Stream, sinks, sources

    monkeypatch.syspath_prepend(str(ROOT / "bench" / "nexmark"))
    for name in ("model", "reference", "with_evflow"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import model
    import with_evflow

    events = model.generate(30_000)
    read_so_far = [0]
    written_at: list[int] = []

    def read(evs: list[Any], name: str) -> Stream[Any]:
        def make(rng: Any, i: int) -> Any:
            read_so_far[0] = i + 1
            return evs[i]

        source = sources.generate(make, count=len(evs), batch_size=500)
        return Pipeline(name).read(source, name="events")

    def run(stream: Stream[Any]) -> list[Any]:
        watch = stream.write(sinks.callback(lambda r: written_at.append(read_so_far[0])))
        result = (stream.write(sinks.memory("out")) | watch).run()
        assert result.reconciles and not result.dead_letters
        return result["out"]

    monkeypatch.setattr(with_evflow, "read", read)
    monkeypatch.setattr(with_evflow, "run", run)
    whole = len(events)
    for q in ("q3", "q4", "q5", "q6", "q7", "q8"):
        written_at.clear()
        with_evflow.QUERIES[q](events)
        early = sum(at < whole for at in written_at)
        assert written_at and early >= len(written_at) // 4, (q, early, len(written_at))
    written_at.clear()
    run(read(events, "at_the_end").key_by(lambda e: type(e).__name__).aggregate(n=agg.count()))
    assert written_at == [whole] * 3  # persons, auctions, bids
