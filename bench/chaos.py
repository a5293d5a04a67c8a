"""Chaos run: kill a windowed pipeline with SIGKILL at random moments, resume, check.

Workload: N generated events (20 users, 10 ms apart, two partitions), keyed by
user, 5-second tumbling event-time windows with count and sum, written to a
jsonl sink, and every event also written as it is to a second jsonl sink.
Each attempt runs ``evflow run`` with ``--recovery`` (snapshots every 0.1 s)
and a worker count that alternates between 1 and 2, and is killed with
SIGKILL at a random moment; a final run resumes to the end. Then: every event
id is in the events file exactly once (no input lost, none written twice),
and the windows file holds every window exactly once, equal to a direct
computation.

Run: ``python bench/chaos.py [--kills 50] [--events 100000] [--seed S]``.
The test suite runs the same with 10 kills (tests/pipelines/test_recovery.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
    sources.generate(make, count=int(os.environ["EVENTS"]), partitions=2, batch_size=500,
                     rate=float(os.environ["RATE"]))
)
pipeline = ticks.write(sinks.jsonl(os.environ["EVENTS_OUT"])) | (
    ticks.key_by(lambda e: e.user)
    .window(windows.tumbling(seconds=5))
    .aggregate(n=agg.count(), total=agg.sum("amount"))
    .write(sinks.jsonl(os.environ["WINDOWS_OUT"]))
)
"""

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Chaos:
    """One chaos run's files and settings."""

    workdir: Path
    events: int = 100_000
    rate: float = 8_000

    def __post_init__(self) -> None:
        self.app = self.workdir / "chaos_app.py"
        self.app.write_text(APP)
        self.store = self.workdir / "store"
        self.events_out = self.workdir / "events.jsonl"
        self.windows_out = self.workdir / "windows.jsonl"

    def env(self, rate: float | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "EVENTS": str(self.events),
            "RATE": str(rate or self.rate),
            "EVENTS_OUT": str(self.events_out),
            "WINDOWS_OUT": str(self.windows_out),
        }

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pipelines",
            "run",
            f"{self.app}:pipeline",
            "--recovery",
            str(self.store),
            "--snapshot-interval",
            "0.1",
            *extra,
        ]

    def kill_at_random(self, kills: int, rng: random.Random, max_attempts: int) -> int:
        """Start and SIGKILL runs until ``kills`` were killed mid-run; return the kills."""
        done = 0
        for attempt in range(max_attempts):
            workers = str(1 + attempt % 2)  # the worker count changes between resumes
            proc = subprocess.Popen(
                self.command("-w", workers, "--quiet"),
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                done += 1
            proc.wait(timeout=60)
            if done >= kills:
                break
        return done

    def finish(self) -> dict[str, object]:
        """Resume to the end at full speed; return the JSON summary."""
        final = subprocess.run(
            self.command("--json"),
            env=self.env(rate=1e9),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if final.returncode != 0:
            msg = f"the final run failed: {final.stderr[-3000:]}{final.stdout[-3000:]}"
            raise AssertionError(msg)
        summary: dict[str, object] = json.loads(final.stdout)
        return summary

    def expected_windows(self) -> dict[tuple[str, float], tuple[int, int]]:
        """The same events, computed directly (generate's two partition streams)."""
        sums: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0])
        for part in range(2):
            rng = random.Random(f"0:{part}")
            for j in range((self.events - part + 1) // 2):
                index = j * 2 + part
                user = f"u{rng.randrange(20)}"
                amount = rng.randrange(100)
                start = (10 * index // 5000) * 5.0
                sums[(user, start)][0] += 1
                sums[(user, start)][1] += amount
        return {k: (v[0], v[1]) for k, v in sums.items()}

    def check(self) -> None:
        """Every event and every window was written exactly once, over all the runs."""
        lines = self.events_out.read_text().splitlines()
        ids = Counter(json.loads(line)["id"] for line in lines)
        missing = {f"t{i}" for i in range(self.events)} - set(ids)
        assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
        twice = [i for i, n in ids.items() if n > 1]
        assert not twice, f"{len(twice)} events written more than once, e.g. {twice[:5]}"
        assert len(ids) == self.events
        rows: Counter[tuple[str, float, int, int]] = Counter()
        for line in self.windows_out.read_text().splitlines():
            row = json.loads(line)
            start = datetime.fromisoformat(row["start"].replace("Z", "+00:00"))
            rows[(row["key"], (start - T0).total_seconds(), row["n"], row["total"])] += 1
        assert max(rows.values()) == 1, "a window was written more than once"
        got = {(k, s): (n, t) for k, s, n, t in rows}
        assert got == self.expected_windows(), "the windows differ from a direct computation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # Slow enough that the runs are killed before the input ends.
    rate = max(2_000.0, args.events / (0.5 * args.kills))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        chaos = Chaos(Path(tmp), args.events, rate)
        kills = chaos.kill_at_random(args.kills, rng, max_attempts=args.kills * 4)
        summary = chaos.finish()
        chaos.check()
    print(
        f"{kills} runs killed with SIGKILL at random moments, worker count alternating 1/2, "
        f"then resumed to the end: {args.events:,} events, none lost, none written twice; "
        f"{len(chaos.expected_windows()):,} windows, each written once and equal to a direct "
        f"computation; final run reconciles: {summary['reconciles']} "
        f"({time.perf_counter() - started:.0f} s in all)"
    )


if __name__ == "__main__":
    main()
