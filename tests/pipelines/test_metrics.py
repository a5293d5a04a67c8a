"""Prometheus metrics served while a pipeline runs (``--metrics-port``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines._cli import main
from pipelines._running.cluster import free_ports

APP = """
from datetime import datetime, timedelta, timezone
from pipelines import Pipeline, sources, sinks, Event
from operators import agg, windows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

class Tick(Event):
    user: str
    amount: int

def make(rng, i):
    back = 60 if i % 100 == 99 else 0  # one event in a hundred is a minute late
    return Tick(user=f"u{i % 7}", amount=i % 50, id=f"t{i}",
                time=T0 + timedelta(milliseconds=10 * i, seconds=-back))

def check(e):
    if e.amount == 13:
        raise ValueError("unlucky amount")
    return e

pipeline = (
    Pipeline("metered")
    .read(sources.generate(make, count=None, rate=5000))
    .map(check)
    .key_by(lambda e: e.user)
    .window(windows.tumbling(seconds=1))
    .aggregate(n=agg.count())
    .write(sinks.memory("out"))
)
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, (name, labels, sorted(k[0] for k in samples))
    return found[0]


def test_a_running_pipeline_serves_its_counters(tmp_path: Path) -> None:
    app = tmp_path / "metered.py"
    app.write_text(APP)
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines",
            "run",
            f"{app}:pipeline",
            "--quiet",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                samples = scrape(port)
            except OSError:
                continue
            if samples and value(samples, "evflow_late_events_total") > 0:
                break
        read = value(samples, "evflow_step_records_total", kind="read", counter="in")
        assert read > 0
        assert value(samples, "evflow_dead_letters_total", step="map_check") > 0
        assert value(samples, "evflow_late_events_total", pipeline="metered") > 0
        assert value(samples, "evflow_watermark_lag_seconds", pipeline="metered") >= 0
        time.sleep(0.3)  # the rate is over the time since the previous scrape
        later = scrape(port)
        assert value(later, "evflow_step_records_total", kind="read", counter="in") >= read
        assert value(later, "evflow_throughput_events_per_second", pipeline="metered") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 130
    # the server went away with the run
    with pytest.raises(OSError):
        scrape(port)


def test_metrics_stay_on_loopback_unless_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "sensors", "--metrics-port", "0", "--metrics-host", "0.0.0.0"]) == 2
    assert "metrics host '0.0.0.0' is not on loopback" in capsys.readouterr().err


def test_metrics_on_a_short_run_through_the_api() -> None:
    from pipelines import Pipeline, sinks, sources

    port = free_ports(1)[0]
    seen: list[float] = []

    def peek(n: int) -> int:
        if n == 500:
            seen.append(
                value(scrape(port), "evflow_step_records_total", counter="in", step="map_peek")
            )
        return n

    result = (
        Pipeline("api").read(sources.memory(range(1000))).map(peek).write(sinks.memory("o"))
    ).run(metrics_port=port)
    assert len(result["o"]) == 1000 and seen and seen[0] >= 0


def test_a_metrics_port_out_of_range_or_taken_is_refused() -> None:
    import socket

    from pipelines import Pipeline, sinks, sources

    p = Pipeline("ports").read(sources.memory([1])).write(sinks.memory("o"))
    with pytest.raises(ValueError, match=r"metrics port must be in 0\.\.65535; got 70000"):
        p.run(metrics_port=70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}: .*"):
            p.run(metrics_port=port)


def test_a_metrics_port_in_use_on_two_processes_is_named_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    port = free_ports(1)[0]
    with socket.socket() as taken:  # process 1's port (port + 1) is in use
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        began = time.monotonic()
        code = main(["run", "sensors", "-p", "2", "--metrics-port", str(port), "--quiet"])
        assert time.monotonic() - began < 10  # not the 30 s formation timeout
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port + 1}" in err
    assert "did not form" not in err and "socketserver" not in err  # no library frames


@pytest.mark.parametrize("held_as", ["states", "timers"])
def test_what_a_process_step_holds_is_served_as_open(held_as: str) -> None:
    # 100 keys, each holding a state, or no state but a timer an hour on (the
    # step said it held nothing open then, with 100 timers in its snapshots).
    from datetime import datetime, timedelta, timezone

    from operators import Event
    from pipelines import Pipeline, sinks, sources

    class Tick(Event):
        k: str

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    port = free_ports(1)[0]
    held: list[float] = []

    def make(rng: Any, i: int) -> Tick:
        if i == 3000:  # earlier events of the 100 keys are held by now
            held.append(value(scrape(port), "evflow_open_windows", step="held"))
        return Tick(k=f"k{i % 100}", time=t0 + timedelta(seconds=i))

    def count(n: int, e: Tick, ctx: Any) -> int:
        return n + 1

    def remind(state: None, e: Tick, ctx: Any) -> None:
        ctx.timer(ctx.time + timedelta(hours=1))  # set, or moved on
        return None

    def fire(state: None, timer: Any, ctx: Any) -> None:
        ctx.emit(timer.key)

    keyed = (
        Pipeline("held")
        .read(sources.generate(make, count=4000, batch_size=100, rate=20_000))
        .key_by(lambda e: e.k)
    )
    if held_as == "states":
        stream = keyed.process(count, initial=int, name="held")
    else:
        stream = keyed.process(remind, initial=lambda: None, on_timer=fire, name="held")
    result = stream.write(sinks.memory("o")).run(metrics_port=port)
    assert held and 100 <= held[0] < 200
    assert result.open_windows == 0 and result.reconciles
    if held_as == "states":
        assert result.expired == 100
    else:
        assert sorted(result["o"]) == sorted(f"k{i}" for i in range(100))


def test_state_a_ttl_frees_leaves_the_served_and_shown_counts_while_the_run_goes_on() -> None:
    # 1,000 keys get one event each in the first 10 s of event time, then one
    # key alone moves time to 50 s (every state younger than the 60 s ttl),
    # then jumps to 200 s: the process step's states and the table's rows of
    # the 1,000 keys are dropped then, before the input ends, and the metrics
    # and the live view say so while the run goes on.
    import io
    import re
    from datetime import datetime, timedelta, timezone

    from rich.console import Console

    from operators import Event
    from pipelines import Pipeline, sinks, sources
    from pipelines._showing.live import LiveView

    class Tick(Event):
        k: str

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    port = free_ports(1)[0]
    view = LiveView(Console(file=io.StringIO()))
    steps = ("count_per_key", "with_row")
    seen: dict[str, list[tuple[float, int]]] = {}

    def shown_open() -> dict[str, int]:
        out = Console(file=io.StringIO(), width=250)
        out.print(view.render())
        lines = out.file.getvalue().splitlines()  # type: ignore[attr-defined]
        header = next(line for line in lines if "step" in line and "kind" in line)
        column = [c.strip() for c in re.split(r"[┃│]", header)].index("open")
        opened = {}
        for line in lines:
            cells = [c.strip() for c in line.split("│")]
            if len(cells) > column and cells[1] in steps:
                opened[cells[1]] = 0 if cells[column] == "." else int(cells[column])
        return opened

    def look(when: str) -> None:
        served = scrape(port)
        shown = shown_open()
        seen[when] = [
            (value(served, "evflow_open_windows", step=step), shown[step]) for step in steps
        ]

    def make(rng: Any, i: int) -> Tick:
        if i == 2000:
            look("before")
        elif i == 2999:
            look("after")
        if i < 1000:
            return Tick(k=f"k{i}", time=t0 + timedelta(milliseconds=10 * i))
        if i < 2000:
            return Tick(k="tail", time=t0 + timedelta(seconds=10 + (i - 1000) * 0.04))
        return Tick(k="tail", time=t0 + timedelta(seconds=200 + (i - 2000) * 0.01))

    def count(n: int, e: Tick, ctx: Any) -> int:
        return n + 1

    p = Pipeline("ttl")
    ticks = p.read(sources.generate(make, count=3000, batch_size=50, rate=10_000)).key_by(
        lambda e: e.k
    )
    counted = ticks.process(count, initial=int, ttl=60, name="count_per_key")
    joined = ticks.filter(lambda e: e.k == "tail", name="tail").join(
        ticks.as_table(ttl=60), name="with_row"
    )
    result = (counted.write(sinks.memory("counts")) | joined.write(sinks.memory("joined"))).run(
        metrics_port=port, monitor=view
    )
    for served, shown in seen["before"]:
        assert served >= 900 and shown >= 900, seen  # the 1,000 keys are held
    for served, shown in seen["after"]:
        # Dropped as time passed their ttl (what is left: the newest events of
        # the one key, held until the watermark passes them, more on a busy machine).
        assert served < 500 and shown < 500, seen
    assert result.reconciles and result.open_windows == 0
    assert result.expired >= 1000 and len(result["joined"]) == 2000
