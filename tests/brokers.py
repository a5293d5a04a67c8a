"""What the broker tests share: a server process on a free port, the app's command, the output.

The Redis and NATS tests start their own servers (subclasses of
`ServerProcess`) and run the same kind of app from the command line.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from operators import Event
from operators._sinks import Sink
from pipelines import Pipeline, sources
from pipelines._running.cluster import free_ports


class Click(Event):
    user: str


class ServerProcess:
    """A broker server on a free loopback port, its data kept in ``folder``."""

    #: Its name in failures.
    name = "server"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, command: list[str], answers: Callable[[], object]) -> None:
        """Start ``command``; wait (10 s at most) until ``answers()`` stops raising."""
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # The port first: a client refused at once may wait seconds to try again.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                answers()
                return
            except Exception:
                time.sleep(0.02)
        pytest.fail(f"{self.name} did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL the server (its data stays in its folder)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


def command(app: Path, *extra: str, summary: str = "--quiet") -> list[str]:
    """The command line that runs ``app``'s pipeline (``summary="--json"``: a JSON summary)."""
    return [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", summary, *extra]


def killed_then_finished(
    app: Path, env: dict[str, str], store: Path, *, seed: int, after: tuple[float, float]
) -> dict[str, Any]:
    """Run ``app`` with recovery in ``store``: SIGKILLed 3 times at random, then to its end.

    Returns the last run's summary (``--json``).
    """
    from tests.helpers import kill_at_random

    resume = ["--recovery", str(store), "--snapshot-interval", "0.1"]
    kills = kill_at_random(command(app, *resume), env, kills=3, seed=seed, after=after)
    assert kills >= 3
    done = subprocess.run(
        command(app, *resume, summary="--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def halted_copy(sink: Sink, store: Path) -> Callable[[], Pipeline]:
    """Copy 0..2999 as ``{"id": ...}`` to ``sink`` with recovery in ``store``, halted at 2000.

    Snapshots are taken meanwhile. Returns what makes the pipeline again, halting
    nowhere, for a resume.
    """
    from pipelines import PipelineHalted

    def stop(x: int) -> int:
        time.sleep(0.0002)  # snapshots are taken meanwhile
        if x == 2000:
            raise RuntimeError("stop")
        return x

    def pipeline(step: Callable[[int], int]) -> Pipeline:
        return (
            Pipeline("copied")
            .read(sources.memory(list(range(3000)), batch_size=10))
            .map(step, on_error="halt")
            .map(lambda x: {"id": str(x)})
            .write(sink)
        )

    with pytest.raises(PipelineHalted):
        pipeline(stop).run(recovery=store, snapshot_interval=0.01)
    return lambda: pipeline(lambda x: x)


def line_count(path: Path) -> int:
    """How many lines ``path`` holds (0 while it does not exist)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def written_ids(path: Path) -> Counter[str]:
    """The ``id`` of every line of a jsonl output, counted."""
    return Counter(json.loads(line)["id"] for line in path.read_text().splitlines())


def write_with_a_loop(sink: Sink, step: str) -> None:
    """Write c0, a record holding itself, then c2 to ``sink`` (write step ``step``).

    The record no JSON can hold made its whole batch fail (retried for the
    sink's ``retry_for``, then every record of it a dead letter): it is a dead
    letter at once, and the others are written.
    """
    loop: list[Any] = ["loop"]
    loop.append(loop)
    records: list[Any] = [Click(user="a", id="c0"), loop, Click(user="b", id="c2")]
    started = time.monotonic()
    result = Pipeline("loop").read(sources.memory(records)).write(sink, name=step).run()
    assert time.monotonic() - started < 30
    [letter] = result.dead_letters
    assert (letter.step, letter.error_type) == (step, "ValueError")
    assert "Circular reference" in letter.message and result.reconciles
