"""What the broker tests share: a server process on a free port, the app's command, the output.

The Redis and NATS tests start their own servers (subclasses of
`ServerProcess`) and run the same kind of app from the command line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from operators import Event
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


def command(app: Path, *extra: str) -> list[str]:
    """The command line that runs ``app``'s pipeline."""
    return [sys.executable, "-m", "pipelines", "run", f"{app}:pipeline", "--quiet", *extra]


def line_count(path: Path) -> int:
    """How many lines ``path`` holds (0 while it does not exist)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def written_ids(path: Path) -> Counter[str]:
    """The ``id`` of every line of a jsonl output, counted."""
    return Counter(json.loads(line)["id"] for line in path.read_text().splitlines())
