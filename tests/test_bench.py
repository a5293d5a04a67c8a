"""The benchmark script runs and its three variants agree (a smoke run, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stateless_benchmark_runs_and_variants_agree() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "stateless_clickstream.py"),
            "--events",
            "3000",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    assert "evflow speed vs bytewax:" in done.stdout
    assert "evflow speed vs python loop:" in done.stdout


def test_windowed_benchmark_runs_and_variants_agree() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "windowed_clickstream.py"),
            "--events",
            "4000",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    assert "evflow speed vs bytewax:" in done.stdout
    assert "evflow on 2 processes vs 1:" in done.stdout
