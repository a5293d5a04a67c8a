"""Window assignment and window/clock arguments."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from operators import windows


def test_tumbling_assignment_and_edges() -> None:
    # size 10:   [0 ........ 10)[10 ....... 20)
    # events:     0     9.99     10          19.5
    w = windows.tumbling(seconds=10)
    assert w.assign(0.0) == [(0.0, 10.0)]
    assert w.assign(9.99) == [(0.0, 10.0)]
    assert w.assign(10.0) == [(10.0, 20.0)]  # exactly on the edge: the next window
    assert w.assign(19.5) == [(10.0, 20.0)]
    assert windows.tumbling(timedelta(minutes=1)).size == 60.0


def test_sliding_assignment_and_edges() -> None:
    # size 10, every 5:
    #   [0 ......... 10)
    #         [5 ......... 15)
    #               [10 ........ 20)
    # event 7 is in [0,10) and [5,15); event 10 is in [5,15) and [10,20)
    w = windows.sliding(seconds=10, every=5)
    assert w.assign(7.0) == [(0.0, 10.0), (5.0, 15.0)]
    assert w.assign(10.0) == [(5.0, 15.0), (10.0, 20.0)]
    assert w.assign(4.999) == [(-5.0, 5.0), (0.0, 10.0)]
    assert windows.sliding(timedelta(seconds=30), timedelta(seconds=10)).assign(30.0) == [
        (10.0, 40.0),
        (20.0, 50.0),
        (30.0, 60.0),
    ]


def test_window_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"tumbling window size must be positive; got 0 seconds"):
        windows.tumbling()
    # (It said "must be positive; got 0 seconds": a timedelta counts whole microseconds.)
    with pytest.raises(ValueError, match=r"at least a microsecond; got 1e-07 seconds"):
        windows.tumbling(seconds=1e-7)
    with pytest.raises(ValueError, match=r"tumbling window size must be positive; got -5"):
        windows.tumbling(seconds=-5)
    with pytest.raises(TypeError, match=r"tumbling window size must be a timedelta or a number"):
        windows.tumbling("10s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"every \(20s\) is longer than the size \(10s\)"):
        windows.sliding(seconds=10, every=20)
    with pytest.raises(ValueError, match=r"must be a whole multiple of every \(3s\)"):
        windows.sliding(seconds=10, every=3)
    with pytest.raises(ValueError, match=r"session gap must be positive"):
        windows.session(seconds=0)
    for part in ("milliseconds", "seconds", "minutes", "hours"):
        for bad in (math.nan, math.inf):
            with pytest.raises(ValueError, match=r"session gap must be a finite number of seconds"):
                windows.session(**{part: bad})
            with pytest.raises(ValueError, match=r"tumbling window size must be a finite number"):
                windows.tumbling(**{part: bad})
        with pytest.raises(ValueError, match=r"tumbling window size must be at most 1000 years"):
            windows.tumbling(**{part: 1e300})  # more than a timedelta holds
    with pytest.raises(ValueError, match=r"sliding window every must be a finite number"):
        windows.sliding(seconds=10, every=math.nan)
    with pytest.raises(ValueError, match=r"count window: n must be a positive int; got 0"):
        windows.count(0)
    with pytest.raises(ValueError, match=r"event_time: max_delay must be zero or positive"):
        windows.event_time("ts", max_delay=-1)
    with pytest.raises(TypeError, match=r"event_time needs a field name or a function"):
        windows.event_time(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"event_time idle_timeout must be positive"):
        windows.event_time("ts", idle_timeout=0)


def test_labels_are_stable_step_name_parts() -> None:
    assert windows.tumbling(seconds=60).label == "tumbling_60s"
    assert windows.sliding(seconds=60, every=15).label == "sliding_60s_every_15s"
    assert windows.session(minutes=5).label == "session_300s"
    assert windows.count(100).label == "count_100"
    assert windows.tumbling(milliseconds=500).label == "tumbling_0_5s"
