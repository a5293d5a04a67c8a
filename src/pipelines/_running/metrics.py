"""Prometheus metrics of a running pipeline, served over HTTP (``--metrics-port``).

Values are read from the run's counters when Prometheus scrapes, so serving
metrics costs nothing between scrapes. Each process of a cluster serves its
own share on its own port: ``port + process id``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipelines._running.compile import Compiled
from pipelines._running.options import OptionError

__all__ = ["Metrics", "MetricsCollector", "serve_metrics"]


@dataclass(frozen=True)
class Metrics:
    """Where to serve metrics: ``host:port`` (loopback unless allowed)."""

    port: int
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        """Refuse a port out of range."""
        if not 0 <= self.port <= 65535:
            msg = f"metrics port must be in 0..65535; got {self.port}."
            raise OptionError(msg)

    def check(self, *, allow_remote: bool) -> Metrics:
        """Refuse a non-loopback host unless allowed.

        >>> Metrics(9100).check(allow_remote=False).host
        '127.0.0.1'
        """
        from pipelines._running.net import is_loopback

        if not allow_remote and not is_loopback(self.host):
            msg = (
                f"metrics host {self.host!r} is not on loopback; metrics are served "
                f"without authentication. Pass --allow-remote (or allow_remote=True) "
                f"to serve them on other interfaces."
            )
            raise OptionError(msg)
        return self


class MetricsCollector(Collector):
    """Turn a compiled pipeline's counters into Prometheus metrics at each scrape."""

    def __init__(self, pipeline: str, compiled: Compiled) -> None:
        """Read ``compiled``'s counters."""
        from pipelines._showing.live import Progress

        self.pipeline = pipeline
        self.compiled = compiled
        self.progress = Progress()
        self.progress.watch(compiled)

    def collect(self) -> Iterator[Metric]:
        """Yield per-step counters, dead letters, late events, throughput, watermarks."""
        compiled = self.compiled
        sample = self.progress.sample(every=0.0)  # throughput since the previous scrape
        records = CounterMetricFamily(
            "evflow_step_records",
            "Records per step and what became of them (in, out, filtered, dead, ...).",
            labels=["pipeline", "step", "kind", "counter"],
        )
        dead = CounterMetricFamily(
            "evflow_dead_letters",
            "Dead letters made by a step (at the dead_letters step: those that did not reach "
            "the dead-letter sink).",
            labels=["pipeline", "step"],
        )
        late = CounterMetricFamily(
            "evflow_late_events",
            "Events behind the watermark at a windowed step.",
            labels=["pipeline", "step"],
        )
        open_ = GaugeMetricFamily(
            "evflow_open_windows",
            "What a keyed step holds: windows or running keys (aggregate), records (join), "
            "key states and held events (process).",
            labels=["pipeline", "step"],
        )
        for step, row in sample.totals.items():
            kind = compiled.kinds[step]
            for counter, value in row.items():
                if counter != "open":
                    records.add_metric([self.pipeline, step, kind, counter], value)
            dead.add_metric([self.pipeline, step], row["dead"])
            if kind in ("aggregate", "join", "process"):
                late.add_metric([self.pipeline, step], row["late"])
                open_.add_metric([self.pipeline, step], row["open"])
        yield records
        yield dead
        yield late
        yield open_
        throughput = GaugeMetricFamily(
            "evflow_throughput_events_per_second",
            "Events read per second since the previous scrape.",
            labels=["pipeline"],
        )
        throughput.add_metric([self.pipeline], sample.rate_in)
        yield throughput
        lag = GaugeMetricFamily(
            "evflow_watermark_lag_seconds",
            "How far a windowed step's watermark is behind the newest event time.",
            labels=["pipeline", "step"],
        )
        for step, (mark, newest) in compiled.counters.progress().items():
            if math.isfinite(mark):
                lag.add_metric([self.pipeline, step], newest - mark)
        yield lag
        uptime = GaugeMetricFamily(
            "evflow_run_seconds", "Seconds since the run started.", labels=["pipeline"]
        )
        uptime.add_metric([self.pipeline], sample.elapsed)
        yield uptime


class _Server:
    def __init__(self, server: Any, thread: Any) -> None:
        self.server = server
        self.thread = thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(metrics: Metrics, pipeline: str, compiled: Compiled, proc_id: int) -> _Server:
    """Start serving ``compiled``'s metrics on ``port + proc_id``; close() stops it."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MetricsCollector(pipeline, compiled))
    port = metrics.port + proc_id if metrics.port else 0
    try:
        server, thread = start_http_server(port, metrics.host, registry)
    except OSError as exc:
        msg = (
            f"cannot serve metrics on {metrics.host}:{port}: {exc}. Hint: choose another "
            f"--metrics-port (process i of a cluster uses port + i)."
        )
        raise OSError(msg) from None  # the message says it all: no socket library frames
    return _Server(server, thread)
