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
