"""Sensors: per-sensor sliding-window mean and peak, alerts over a threshold, late readings apart.

Generated temperature readings from 40 sensors arrive through three
partitions, some out of order (within the 5-second allowed delay), a few far
too late, a few malformed. Each sensor gets a one-minute window every 15
seconds with its mean, peak and count; windows whose peak crosses the
threshold are forwarded to an alerts sink, the rest to a stats sink, and
late readings are written to their own sink.

>>> from pipelines import testing
>>> result = testing.run(build(count=9000))
>>> result.reconciles, result.read, result.open_windows
(True, 9000, 0)
>>> len(result["late_readings"]) > 0 and len(result["alerts"]) > 0
True
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

from pydantic import AwareDatetime

from operators import Event, Sink, agg, windows
from pipelines import sinks, sources
from pipelines._building.builder import Pipeline

__all__ = ["Reading", "build", "make_reading"]

START = datetime(2026, 6, 1, tzinfo=timezone.utc)
SENSORS = 40


class Reading(Event):
    """One temperature reading; ``at`` is when it was measured."""

    sensor: str
    celsius: float
    at: AwareDatetime


def make_reading(rng: random.Random, i: int) -> str:
    """Make reading number ``i`` (one every 100 ms) as JSON text."""
    sensor = rng.randrange(SENSORS)
    at = START + timedelta(milliseconds=100 * i)
    roll = rng.random()
    if roll < 0.10:
        at -= timedelta(seconds=rng.uniform(0, 4))  # out of order, within the delay
    elif roll < 0.105:
        at -= timedelta(hours=1)  # far too late
    base = 20 + sensor % 7
    spike = 25 if (i // 500) % 11 == sensor % 11 else 0  # now and then a sensor runs hot
    record = {
        "type": "reading",
        "id": f"r{i}",
        "sensor": f"s{sensor:02d}",
        "celsius": round(base + spike + rng.gauss(0, 1.5), 2),
        "at": at.isoformat(),
        "time": at.isoformat(),
    }
    if rng.random() < 0.005:
        return json.dumps(record)[:-5]
    return json.dumps(record)


def build(
    *,
    count: int = 60_000,
    seed: int = 3,
    threshold: float = 40.0,
    alerts: Sink | None = None,
    stats: Sink | None = None,
    late: Sink | None = None,
) -> Pipeline:
    """Build the sensors pipeline on ``count`` generated readings."""
    readings = Pipeline("sensors").read(
        sources.generate(
            make_reading, count=count, seed=seed, partitions=3, schema=Reading, name="readings"
        )
    )
    per_sensor = (
        readings.key_by(lambda r: r.sensor)
        .window(
            windows.sliding(seconds=60, every=15),
            clock=windows.event_time("at", max_delay=timedelta(seconds=5)),
        )
        .aggregate(mean=agg.mean("celsius"), peak=agg.max("celsius"), n=agg.count())
    )
    routes = per_sensor.forward(hot=lambda w: w.peak > threshold, otherwise="normal")
    return (
        routes.hot.write(alerts or sinks.memory("alerts"))
        | routes.normal.write(stats or sinks.memory("stats"))
        | per_sensor.late.write(late or sinks.memory("late_readings"))
    )
