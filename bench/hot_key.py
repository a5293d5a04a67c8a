"""One hot key: session windows and joins of a key that holds thousands of open windows.

Workload: one key; N "left" events 3 seconds apart and a "right" event 1.5
seconds after every third left one (so it bridges two left sessions), all
built as evflow events before timing, each side in event-time order, read
1,000 at a time. A long allowed delay (bytewax: ``wait_for_system_duration``,
evflow: ``max_delay``; a day) keeps every window of the key open until the
end, as one slow input or a late-tolerant clock does in a real run.

- ``sessions``: the left and right events of the key counted in session
  windows (gap 2 s): evflow's ``window(session).aggregate(n=count())``
  beside bytewax's ``count_window`` with a ``SessionWindower``; the result is
  the sorted list of counts.
- ``session join``: the left events joined with the right ones in the same
  session windows: evflow's ``join(window=session)`` beside bytewax's
  ``join_window`` (``insert_mode="product"``, pairs with both sides kept);
  the result is the number of pairs and a checksum of their ids.
- ``interval join``: each left event with the right events 0 to 4 seconds
  after it: evflow's ``join(between=(0, 4))`` beside a hand-written bytewax
  ``stateful_map`` that keeps the key's events of each side until both sides
  have passed them by a day and 4 seconds, and scans the other side's
  (bytewax has no interval join).

All variants of a workload must agree. Run:
``python bench/hot_key.py [--events N] [--rounds R] [--workloads sessions,...]``.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from harness import interleaved, report
from windowed_join import checksum

from operators import Event, agg, windows
from pipelines import Pipeline, sinks, sources

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
GAP = timedelta(seconds=2)
DELAY = timedelta(days=1)
AFTER = 4.0


class Left(Event):
    key: str = "hot"


class Right(Event):
    key: str = "hot"


def build(n: int) -> tuple[list[Left], list[Right]]:
    """Make ``n`` left events and a right one after every third."""
    lefts = [Left(id=f"l{i}", time=T0 + timedelta(seconds=3 * i)) for i in range(n)]
    rights = [Right(id=f"r{i}", time=T0 + timedelta(seconds=3 * i + 1.5)) for i in range(0, n, 3)]
    return lefts, rights


def _clock() -> win.EventClock[Any]:
    return win.EventClock(
        lambda e: e.time, wait_for_system_duration=DELAY, to_system_utc=lambda t: None
    )


def _evflow_sides(lefts: list[Left], rights: list[Right], name: str) -> tuple[Any, Any]:
    p = Pipeline(name)
    left = p.read(sources.memory(lefts, batch_size=1000), name="lefts").key_by(
        lambda e: e.key, name="left_key"
    )
    right = p.read(sources.memory(rights, batch_size=1000), name="rights").key_by(
        lambda e: e.key, name="right_key"
    )
    return left, right


def _bytewax_sides(lefts: list[Left], rights: list[Right], name: str) -> tuple[Any, Any, Any]:
    flow = Dataflow(name)
    left = op.input("l", flow, TestingSource(lefts, 1000))
    right = op.input("r", flow, TestingSource(rights, 1000))
    return flow, left, right


def _keyed(left: Any, right: Any) -> tuple[Any, Any]:
    return op.key_on("kl", left, lambda e: e.key), op.key_on("kr", right, lambda e: e.key)


def sessions_evflow(lefts: list[Left], rights: list[Right]) -> list[int]:
    left, right = _evflow_sides(lefts, rights, "hot_sessions")
    counts = (
        left.merge(right)
        .key_by(lambda e: e.key, name="key")
        .window(windows.session(gap=GAP), clock=windows.event_time(max_delay=DELAY))
        .aggregate(n=agg.count())
    )
    result = counts.write(sinks.memory("counts")).run()
    assert result.reconciles and result.dead == 0
    return sorted(r.n for r in result["counts"])


def sessions_bytewax(lefts: list[Left], rights: list[Right]) -> list[int]:
    flow, left, right = _bytewax_sides(lefts, rights, "bw_hot_sessions")
    both = op.merge("both", left, right)
    counts = win.count_window(
        "count", both, _clock(), win.SessionWindower(gap=GAP), lambda e: e.key
    )
    out: list[Any] = []
    op.output("out", counts.down, TestingSink(out))
    run_main(flow)
    return sorted(n for _, (_, n) in out)


def _join_evflow(lefts: list[Left], rights: list[Right], **kind: Any) -> tuple[int, int]:
    left, right = _evflow_sides(lefts, rights, "hot_join")
    joined = left.join(
        right, clock=windows.event_time(max_delay=DELAY), select=lambda a, b: (a.id, b.id), **kind
    )
    result = joined.write(sinks.memory("pairs")).run()
    assert result.reconciles and result.dead == 0
    return checksum(result["pairs"])


def session_join_evflow(lefts: list[Left], rights: list[Right]) -> tuple[int, int]:
    return _join_evflow(lefts, rights, window=windows.session(gap=GAP))


def session_join_bytewax(lefts: list[Left], rights: list[Right]) -> tuple[int, int]:
    flow, left, right = _bytewax_sides(lefts, rights, "bw_hot_session_join")
    left, right = _keyed(left, right)
    joined = win.join_window(
        "join", _clock(), win.SessionWindower(gap=GAP), left, right, insert_mode="product"
    )
    out: list[Any] = []
    op.output("out", joined.down, TestingSink(out))
    run_main(flow)
    return checksum([(a.id, b.id) for _, (_, (a, b)) in out if a is not None and b is not None])


def interval_join_evflow(lefts: list[Left], rights: list[Right]) -> tuple[int, int]:
    return _join_evflow(lefts, rights, between=(0, AFTER))


def interval_join_bytewax(lefts: list[Left], rights: list[Right]) -> tuple[int, int]:
    flow, left, right = _bytewax_sides(lefts, rights, "bw_hot_interval_join")
    left, right = _keyed(left, right)
    tagged = op.merge(
        "both",
        op.map_value("tl", left, lambda e: (0, e.time.timestamp(), e.id)),
        op.map_value("tr", right, lambda e: (1, e.time.timestamp(), e.id)),
    )

    def meet(state: Any, item: Any) -> tuple[Any, list[tuple[str, str]]]:
        # The key's events of each side, in time order (as each side comes
        # here), and each side's newest time: what both sides have passed by
        # more than the delay can meet nothing on time any more.
        held = state or ([], [], [float("-inf"), float("-inf")])
        side, ts, eid = item
        held[2][side] = max(held[2][side], ts)
        horizon = min(held[2]) - DELAY.total_seconds() - AFTER
        for events in held[:2]:
            while events and events[0][0] < horizon:
                events.pop(0)
        if side == 0:
            found = [(eid, rid) for rt, rid in held[1] if ts <= rt <= ts + AFTER]
        else:
            found = [(lid, eid) for lt, lid in held[0] if lt <= ts <= lt + AFTER]
        held[side].append((ts, eid))
        return held, found

    pairs = op.flat_map_value("pairs", op.stateful_map("meet", tagged, meet), lambda p: p)
    out: list[Any] = []
    op.output("out", pairs, TestingSink(out))
    run_main(flow)
    return checksum([p for _, p in out])


WORKLOADS = {
    "sessions": (sessions_evflow, sessions_bytewax),
    "session join": (session_join_evflow, session_join_bytewax),
    "interval join": (interval_join_evflow, interval_join_bytewax),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args()
    lefts, rights = build(args.events)
    total = len(lefts) + len(rights)
    lines = []
    for name in args.workloads.split(","):
        ours, theirs = WORKLOADS[name]
        print(f"-- {name}")
        medians, _ = interleaved(
            {
                "evflow": lambda ours=ours: ours(lefts, rights),
                "bytewax": lambda theirs=theirs: theirs(lefts, rights),
            },
            args.rounds,
        )
        report(medians, total)
        lines.append(f"{name:14s} evflow {medians['bytewax'] / medians['evflow']:6.2f}x bytewax")
    print(f"\none key, {total} events, {args.rounds} rounds, medians; evflow's speed:")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
