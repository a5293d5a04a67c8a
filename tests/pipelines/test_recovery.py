"""Crash and resume: killed at random moments, resumed, nothing lost, state exact."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipelines import Pipeline, sinks, sources

APP = """
import os
from datetime import datetime, timedelta, timezone
from pipelines import Pipeline, sources, sinks, Event
from operators import agg, windows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

class Tick(Event):
    user: str
    amount: int

def make(rng, i):
    return Tick(user=f"u{rng.randrange(20)}", amount=rng.randrange(100), id=f"t{i}",
                time=T0 + timedelta(milliseconds=10 * i))

ticks = Pipeline("recover").read(
    sources.generate(make, count=60000, partitions=2, batch_size=500,
                     rate=float(os.environ["RATE"]))
)
pipeline = ticks.write(sinks.jsonl(os.environ["EVENTS"])) | (
    ticks.key_by(lambda e: e.user)
    .window(windows.tumbling(seconds=5))
    .aggregate(n=agg.count(), total=agg.sum("amount"))
    .write(sinks.jsonl(os.environ["OUT"]))
)
"""


def expected_windows() -> dict[tuple[str, float], tuple[int, int]]:
    """The same 60,000 events, computed directly (generate's partition streams)."""
    windows: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0])
    for part in range(2):
        rng = random.Random(f"0:{part}")
        for j in range(30000):
            index = j * 2 + part
            user = f"u{rng.randrange(20)}"
            amount = rng.randrange(100)
            start = (10 * index // 5000) * 5.0
            windows[(user, start)][0] += 1
            windows[(user, start)][1] += amount
    return {k: (v[0], v[1]) for k, v in windows.items()}


def test_killed_at_random_and_resumed_loses_nothing(tmp_path: Path) -> None:
    app = tmp_path / "recover_app.py"
    app.write_text(APP)
    store = tmp_path / "store"
    rng = random.Random(4)
    out, events = tmp_path / "windows.jsonl", tmp_path / "events.jsonl"
    base_env = {**os.environ, "RATE": "30000", "OUT": str(out), "EVENTS": str(events)}
    kills = 0
    for attempt in range(10):
        env = base_env
        workers = str(1 + attempt % 2)  # the worker count changes between resumes
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines",
                "run",
                f"{app}:pipeline",
                "-w",
                workers,
                "--recovery",
                str(store),
                "--snapshot-interval",
                "0.1",
                "--quiet",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 0.9))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    final = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "run",
            f"{app}:pipeline",
            "--recovery",
            str(store),
            "--snapshot-interval",
            "0.1",
            "--json",
        ],
        env={**base_env, "RATE": "1000000"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr[-3000:] + final.stdout[-3000:]
    assert json.loads(final.stdout)["reconciles"]
    assert kills >= 3  # attempts were killed mid-run (most are, unless the machine is idle)
    assert_written_once(events, out)


def assert_written_once(events: Path, out: Path) -> None:
    """Every event and every window was written exactly once, over all the runs."""
    # the jsonl sinks were cut back to the last snapshot on each resume
    ids = Counter(json.loads(line)["id"] for line in events.read_text().splitlines())
    assert set(ids) == {f"t{i}" for i in range(60000)}
    assert max(ids.values()) == 1
    rows: Counter[tuple[str, float, int, int]] = Counter()
    for line in out.read_text().splitlines():
        row = json.loads(line)
        rows[(row["key"], time_of(row["start"]), row["n"], row["total"])] += 1
    expected = expected_windows()
    assert max(rows.values()) == 1
    assert {(k, s): (n, t) for k, s, n, t in rows} == expected
    assert sum(n for n, _ in expected.values()) == 60000


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_killed_process_of_a_cluster_is_restarted_and_results_are_exact(
    tmp_path: Path,
) -> None:
    app = tmp_path / "recover_app.py"
    app.write_text(APP)
    out, events = tmp_path / "windows.jsonl", tmp_path / "events.jsonl"
    env = {**os.environ, "RATE": "20000", "OUT": str(out), "EVENTS": str(events)}
    command = [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "-p", "2"]
    command += ["--recovery", str(tmp_path / "store"), "--snapshot-interval", "0.2"]
    proc = subprocess.Popen(
        [*command, "--restart", "2", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    members = children(proc.pid)
    assert len(members) == 2, "the cluster did not start"
    os.kill(members[1], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert (
        "process 1 of pipeline" in stderr and "restarting from the last snapshot (1 of 2)" in stderr
    )
    summary = json.loads(stdout)
    assert summary["restarts"] == 1 and summary["reconciles"]
    assert_written_once(events, out)


def time_of(text: str) -> float:
    from datetime import datetime, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - t0).total_seconds()


def test_an_unsafe_recovery_directory_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "shared_store"
    store.mkdir()
    store.chmod(0o777)
    p = Pipeline("r").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(PermissionError, match=r"can be written by other users .*chmod 700"):
        p.run(recovery=store)
    fresh = tmp_path / "fresh_store"
    assert p.run(recovery=fresh)["o"] == [1]
    assert fresh.stat().st_mode & 0o777 == 0o700 and list(fresh.glob("*.sqlite3"))
    with pytest.raises(ValueError, match=r"snapshot_interval must be positive seconds"):
        p.run(recovery=fresh, snapshot_interval=0)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_store_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    import pickle
    import sqlite3

    from pipelines._store import UnsafeSnapshotError

    store = tmp_path / "store"
    p = Pipeline("t").read(sources.memory(range(10))).write(sinks.memory("o"))
    p.run(recovery=store)
    marker = tmp_path / "pwned"
    part = next(store.glob("*.sqlite3"))
    with sqlite3.connect(part) as db:
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
            "VALUES ('t.read_memory', 'part0', 99, ?)",
            (pickle.dumps(_Evil(marker)),),
        )
    with pytest.raises(
        UnsafeSnapshotError,
        match=r"holds a snapshot of step 't.read_memory' "
        r"\(key 'part0'\) that refers to "
        r"(posix|os)\.system, which is not evflow state",
    ):
        p.run(recovery=store)
    assert not marker.exists()


def test_a_store_that_is_not_a_recovery_store_is_refused(tmp_path: Path) -> None:
    from pipelines._store import UnsafeSnapshotError

    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "part-0.sqlite3").write_bytes(b"not a database at all" * 100)
    p = Pipeline("t").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(
        UnsafeSnapshotError,
        match=r"part-0.sqlite3 is not a readable evflow "
        r"recovery partition",
    ):
        p.run(recovery=store)


def test_restart_needs_recovery() -> None:
    p = Pipeline("r").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"restart=2 needs recovery"):
        p.run(restart=2)
    with pytest.raises(ValueError, match=r"restart must be an int >= 0"):
        p.run(restart=-1)
