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

With ``--mixed ROUNDS``, each round is a fault drawn at random instead: a
SIGKILL; a halt (a map with ``on_error="halt"`` fails on a random event); a
full disk (a file-size limit at a random point of the output); a SIGKILL of
the parent of a 2-process run (its members must end with it); or a second
run started on the store of a running one (it must be refused).

Run: ``python bench/chaos.py [--kills 50 | --mixed 50] [--events 100000] [--seed S]``.
The test suite runs small versions (tests/pipelines/test_recovery.py and
tests/pipelines/test_faults.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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

FAIL_AT = os.environ.get("FAIL_AT", "")

def stop_at(e):
    if e.id == FAIL_AT:
        raise RuntimeError(f"failure injected at {e.id}")
    return e

ticks = Pipeline("recover").read(
    sources.generate(make, count=int(os.environ["EVENTS"]), partitions=2, batch_size=500,
                     rate=float(os.environ["RATE"]))
).map(stop_at, on_error="halt")
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

    def run(
        self,
        *extra: str,
        fail_at: int | None = None,
        file_limit: int | None = None,
        rate: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to the end (or to a failure): optionally halting at event ``fail_at``,
        or with the output files' disk full beyond ``file_limit`` bytes."""
        env = self.env(rate)
        if fail_at is not None:
            env["FAIL_AT"] = f"t{fail_at}"

        def full_disk() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a signal
            assert file_limit is not None
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

        return subprocess.run(
            self.command(*extra, "--quiet"),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=full_disk if file_limit is not None else None,
        )

    def halt(self, rng: random.Random, *extra: str) -> None:
        """A map with ``on_error="halt"`` fails on a random event: the run stops, says why."""
        written = set()
        if self.events_out.exists():
            # A member stopped while writing may leave a torn last line (no
            # newline yet); the resume cuts the file back to its snapshot.
            whole = self.events_out.read_text().rpartition("\n")[0]
            written = {json.loads(line)["id"] for line in whole.splitlines()}
        left = [i for i in range(self.events) if f"t{i}" not in written]
        if not left:
            return
        at = rng.choice(left)  # an event not yet through: the run meets it
        done = self.run(*extra, fail_at=at, rate=1e9)
        assert done.returncode == 1, done.stderr[-3000:]
        assert f"failure injected at t{at}" in done.stderr, done.stderr[-3000:]
        assert "halted at step 'map_stop_at'" in done.stderr, done.stderr[-3000:]

    def fail_writes(self, rng: random.Random, *extra: str) -> bool:
        """The disk fills up (a file-size limit) at a random point of the output.

        Returns whether a write failed (the limit may lie beyond the output's end).
        """
        written = self.events_out.stat().st_size if self.events_out.exists() else 0
        final = self.events * 90  # about 90 bytes an event
        limit = written + int(rng.uniform(0.05, 0.9) * max(final - written, 100_000))
        done = self.run(*extra, file_limit=limit, rate=1e9)
        if done.returncode == 0:
            return False
        assert done.returncode == 1, done.stderr[-3000:]
        assert "error in pipeline" in done.stderr, done.stderr[-3000:]
        return True

    def kill_parent(self, rng: random.Random) -> None:
        """SIGKILL the parent of a 2-process run: its members must end with it."""
        proc = subprocess.Popen(
            self.command("-p", "2", "--quiet"),
            env=self.env(rate=self.events / 20),  # 20 s of input: the members are busy
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while len(members(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        found = members(proc.pid)
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 1
        while any(alive(pid) for pid in found) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [pid for pid in found if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert len(found) == 2, "the cluster did not start"
        assert not left, f"members {left} outlived their parent"

    def concurrent(self, rng: random.Random) -> None:
        """A second run on the store of a running one is refused at once."""
        first = subprocess.Popen(
            self.command("--quiet"),
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 0.8))
        if first.poll() is None:
            second = self.run(rate=1e9)
            running = first.poll() is None
            if running:
                assert second.returncode == 1, second.stderr[-3000:]
                assert "is in use by another run" in second.stderr, second.stderr[-3000:]
            first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)

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


def members(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


MODES = ("kill", "halt", "write_failure", "parent_kill", "concurrent")


def mixed(chaos: Chaos, rounds: int, rng: random.Random) -> Counter[str]:
    """Run ``rounds`` faults drawn at random from `MODES`; return how many of each."""
    done: Counter[str] = Counter()
    for _ in range(rounds):
        mode = rng.choice(MODES)
        workers = str(rng.choice((1, 2)))
        if mode == "kill":
            chaos.kill_at_random(1, rng, max_attempts=3)
        elif mode == "halt":
            chaos.halt(rng, "-w", workers)
        elif mode == "write_failure":
            chaos.fail_writes(rng, "-w", workers)
        elif mode == "parent_kill":
            chaos.kill_parent(rng)
        else:
            chaos.concurrent(rng)
        done[mode] += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mixed",
        type=int,
        metavar="ROUNDS",
        help="instead of SIGKILLs only, ROUNDS faults drawn from: " + ", ".join(MODES),
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    rounds = args.mixed or args.kills
    # Slow enough that the runs are stopped before the input ends.
    rate = max(2_000.0, args.events / (0.5 * rounds))
    with tempfile.TemporaryDirectory() as tmp:
        chaos = Chaos(Path(tmp), args.events, rate)
        if args.mixed:
            done = mixed(chaos, args.mixed, rng)
            what = ", ".join(f"{n} {mode}" for mode, n in sorted(done.items()))
            what = f"{args.mixed} faults at random ({what})"
        else:
            kills = chaos.kill_at_random(args.kills, rng, max_attempts=args.kills * 4)
            what = (
                f"{kills} runs killed with SIGKILL at random moments, worker count alternating 1/2"
            )
        summary = chaos.finish()
        chaos.check()
    print(
        f"{what}, then resumed to the end: {args.events:,} events, none lost, none written "
        f"twice; {len(chaos.expected_windows()):,} windows, each written once and equal to a "
        f"direct computation; final run reconciles: {summary['reconciles']} "
        f"({time.perf_counter() - started:.0f} s in all)"
    )


if __name__ == "__main__":
    main()
