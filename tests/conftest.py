"""What every test shares: no pipeline run a test started outlives it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


def _runs() -> dict[int, str]:
    """This process's children that run a pipeline (``python -m pipelines run ...``), by pid."""
    found = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == me and "pipelines run" in command:
            found[int(entry.name)] = command
    return found


@pytest.fixture(autouse=True)
def _no_run_left() -> Iterator[None]:
    """Kill the pipeline runs a test left (a followed file's or a live stream's never ends).

    A test that fails before it stops its run left it reading on, taking a core from
    the tests after it. Runs the test found already started are left alone.
    """
    if not Path("/proc").is_dir():
        yield
        return
    before = set(_runs())
    yield
    for pid in set(_runs()) - before:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
