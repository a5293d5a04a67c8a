"""Stopping a run: Ctrl-C and SIGTERM whatever user code does, formation timeouts, counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines._running.cluster import free_ports
from tests.helpers import children

ROOT = Path(__file__).resolve().parents[2]

HANGING = """
import time
from pipelines import Pipeline, sources, sinks
def slow(x):
    if x["i"] == 3000:
        time.sleep(1000)  # a user function that never returns
    return x
pipeline = (Pipeline("hang")
    .read(sources.generate(lambda rng, i: {"i": i}, count=None, partitions=2, rate=5000))
    .map(slow).write(sinks.memory("o")))
"""

ENDLESS = """
from pipelines import Pipeline, sources, sinks
pipeline = (Pipeline("endless")
            .read(sources.generate(lambda rng, i: i, count=None, rate=2000, partitions=2))
            .filter(lambda n: n % 2 == 0).write(sinks.memory("o")))
"""


def start(app: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RUST_BACKTRACE": "1", **env},
    )


def test_a_hanging_function_on_two_workers_cannot_keep_sigterm_from_stopping_it(
    tmp_path: Path,
) -> None:
    app = tmp_path / "hang.py"
    app.write_text(HANGING)
    proc = start(app, "-w", "2", "--quiet", EVFLOW_STOP_GRACE="1")
    time.sleep(3)  # well past event 3000: one worker hangs
    assert proc.poll() is None
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - stopped < 10, err[-3000:]  # the 1 s grace, on a busy machine
    assert proc.returncode == 130, err[-3000:]
    assert "did not stop within 1 s of the stop request (a step is still busy)" in err
    assert "interrupted: the counts so far" in err
    assert "pipeline hang: 2 worker(s)" in out and "map_slow" in out


def test_a_second_sigterm_ends_the_run_at_once(tmp_path: Path) -> None:
    app = tmp_path / "hang.py"
    app.write_text(HANGING)
    proc = start(app, "-w", "2", "--quiet", EVFLOW_STOP_GRACE="60")
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert time.monotonic() - stopped < 3  # not the 60 s grace
    assert proc.returncode == -signal.SIGTERM


def test_sigterm_of_one_process_prints_the_summary_and_no_engine_backtrace(
    tmp_path: Path,
) -> None:
    app = tmp_path / "endless.py"
    app.write_text(ENDLESS)
    proc = start(app, "--quiet")
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "pipeline endless" in out
    assert "panicked" not in err and "stack backtrace" not in err and "RUST_BACKTRACE" not in err
    assert err.strip() == "interrupted: the counts so far"


WINDOWED = """
from datetime import datetime, timedelta, timezone
from operators import agg, windows
from pipelines import Pipeline, sources, sinks
t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
pipeline = (Pipeline("windowed")
    .read(sources.generate(lambda rng, i: {"k": str(i % 3), "t": t0 + timedelta(seconds=i)},
                           count=None, rate=2000))
    .key_by(lambda d: d["k"])
    .window(windows.tumbling(hours=1), clock=windows.event_time(lambda d: d["t"]))
    .aggregate(n=agg.count()).write(sinks.memory("o")))
"""


def test_a_stopped_runs_summary_says_what_its_open_windows_took_in_was_not_emitted(
    tmp_path: Path,
) -> None:
    # It said "reconciles", every record read counted as aggregated, and nothing of
    # the windows still open when it stopped.
    app = tmp_path / "windowed.py"
    app.write_text(WINDOWED)
    proc = start(app, "--quiet", COLUMNS="200")
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-3000:]
    line = " ".join(out.split())
    found = re.search(r"aggregated (\d+) .*: reconciles \((\d+) windows, key states", line)
    assert found is not None, line
    assert int(found[1]) > 2000 and int(found[2]) >= 3  # three keys, an hour's window each
    assert "still open when the run stopped: what they took in was not emitted" in line


def test_sigterm_of_two_processes_prints_the_counts_the_members_sent(tmp_path: Path) -> None:
    app = tmp_path / "endless.py"
    app.write_text(ENDLESS)
    proc = start(app, "-p", "2", "--json")
    deadline = time.monotonic() + 30
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: the counts so far" in err
    summary = json.loads(out)
    assert summary["processes"] == 2
    steps = summary["steps"]
    # about 2,000 events a second per partition for 3 s, from both members
    assert steps["read_generate"]["received"] > 4_000
    assert steps["filter"]["received"] > 4_000


def test_a_member_whose_peer_never_comes_stops_at_its_formation_timeout(tmp_path: Path) -> None:
    app = tmp_path / "endless.py"
    app.write_text(ENDLESS)
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    began = time.monotonic()
    proc = start(
        app, "--addresses", addresses, "--process-id", "0", "--formation-timeout", "2", "--quiet"
    )
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - began < 15
    assert proc.returncode == 1
    peer = addresses.split(",")[1]
    assert (
        f"cluster member 0 of pipeline 'endless' could not form its cluster within 2 s: "
        f"not every member at {peer} joined" in err
    )


def test_sigterm_stops_a_member_waiting_for_an_unresolvable_peer(tmp_path: Path) -> None:
    app = tmp_path / "endless.py"
    app.write_text(ENDLESS)
    port = free_ports(1)[0]
    proc = start(
        app,
        "--addresses",
        f"127.0.0.1:{port},nowhere.invalid:2101",
        "--process-id",
        "0",
        "--allow-remote",
        "--quiet",
    )
    time.sleep(2)
    assert proc.poll() is None
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - stopped < 5
    assert proc.returncode == 130 and "interrupted" in err


INTERRUPTING = """
from pipelines import Pipeline, sources, sinks
def f(x):
    if x["i"] == 5000:
        raise KeyboardInterrupt("raised by the user's function")
    return x
pipeline = (Pipeline("kbd")
    .read(sources.generate(lambda rng, i: {"i": i}, count=20_000, partitions=2))
    .map(f).write(sinks.memory("o")))
"""


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_keyboard_interrupt_from_a_user_function_is_shown_first(
    tmp_path: Path, processes: str
) -> None:
    app = tmp_path / "interrupting.py"
    app.write_text(INTERRUPTING)
    proc = start(app, "-p", processes, "--quiet")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "PanicException" not in err and "Send thread panic" not in err
    assert err.startswith("error in pipeline")
    assert 'interrupting.py", line 5, in f' in err
    assert "KeyboardInterrupt: raised by the user's function" in err
