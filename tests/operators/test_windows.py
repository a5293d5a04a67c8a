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


def test_windows_aligned_to_an_instant_start_there() -> None:
    from datetime import datetime, timezone

    tokyo = timezone(timedelta(hours=9))
    # days from midnight in Tokyo: 2024-01-01T00:00+09:00 is 2023-12-31T15:00Z
    day = windows.tumbling(days=1, align_to=datetime(2020, 6, 1, tzinfo=tokyo))
    midnight = datetime(2024, 1, 1, tzinfo=tokyo).timestamp()
    assert day.offset == 15 * 3600 and day.label == "tumbling_86400s_at_54000s"
    assert day.assign(midnight) == [(midnight, midnight + 86400)]
    assert day.assign(midnight - 0.5) == [(midnight - 86400, midnight)]
    assert day.last_end(midnight + 3600) == midnight + 86400
    # size 10, every 5, aligned to 3 s past the epoch:
    #   [-2 ........ 8)
    #          [3 ........ 13)
    # event 7.5 is in both; event 8 in [3,13) and [8,18)
    w = windows.sliding(seconds=10, every=5, align_to=3)
    assert w.assign(7.5) == [(-2.0, 8.0), (3.0, 13.0)]
    assert w.assign(8.0) == [(3.0, 13.0), (8.0, 18.0)]
    assert w.last_end(7.5) == 13.0 and w.label == "sliding_10s_every_5s_at_3s"
    assert windows.tumbling(seconds=10, align_to=-7).assign(2.5) == [(-7.0, 3.0)]
    # an instant on the epoch's grid is no offset at all: the same windows, names and state
    assert windows.tumbling(seconds=60, align_to=120.0) == windows.tumbling(seconds=60)
    assert repr(windows.sliding(seconds=60, every=10)) == "Sliding(size=60.0, every=10.0)"
    with pytest.raises(ValueError, match=r"needs an aware datetime .* Hint: align_to=datetime"):
        windows.tumbling(days=1, align_to=datetime(2024, 1, 1))  # noqa: DTZ001 - naive on purpose
    with pytest.raises(TypeError, match=r"takes an aware datetime or epoch seconds; got str"):
        windows.sliding(seconds=10, every=5, align_to="00:00")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"align_to=...\) must be finite"):
        windows.tumbling(seconds=10, align_to=math.nan)
    with pytest.raises(ValueError, match=r"offset must be at least 0 and less than its size"):
        windows.Tumbling(10.0, 10.0)


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
    with pytest.raises(
        ValueError,
        match=r"must be a whole multiple of every \(3s\), .* Hint: sliding\(seconds=9, every=3\) "
        r"or sliding\(seconds=12, every=3\)\.",
    ):
        windows.sliding(seconds=10, every=3)
    with pytest.raises(ValueError, match=r"Hint: sliding\(seconds=6, every=3\)\.$"):
        windows.sliding(seconds=4, every=3)
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
        # True was a second, "5" failed inside timedelta with its own words
        for odd in (True, "5"):
            with pytest.raises(TypeError, match=rf"tumbling window size: {part}= must be a number"):
                windows.tumbling(**{part: odd})
    with pytest.raises(ValueError, match=r"sliding window every must be a finite number"):
        windows.sliding(seconds=10, every=math.nan)
    with pytest.raises(ValueError, match=r"count window: n must be a positive int; got 0"):
        windows.count(0)
    for far in (-1, math.inf):
        with pytest.raises(ValueError, match=r"event_time: max_delay must be a finite number"):
            windows.event_time("ts", max_delay=far)
    for odd in ("5s", None, True):  # float("5s") and float(None) said nothing of max_delay
        with pytest.raises(TypeError, match=r"max_delay must be a timedelta or a number of"):
            windows.event_time("ts", max_delay=odd)  # type: ignore[arg-type]
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
