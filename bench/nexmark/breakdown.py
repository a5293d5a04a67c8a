"""Where NEXMark Q4's time goes: the parts of the evflow query beside the bytewax query.

Times, interleaved round after round (``bench/harness.py``), on the same events:

- ``bytewax q4``: the whole hand-written bytewax Q4 (with_bytewax.py);
- ``loop calling best_bid``: a bare loop that calls evflow's Q4 function
  ``best_bid`` once per auction and bid, with a dict of states and nothing
  else (no engine, no event-time order, no timers);
- ``evflow read and filter``: Q4's source and filter, written to a sink;
- ``evflow + key_by + process(no-op)``: then keyed by auction into a process
  step whose function returns the state it gets;
- ``evflow q4``: the whole evflow Q4 (with_evflow.py).

Run: ``python bench/nexmark/breakdown.py [--events N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/harness.py

import with_bytewax
import with_evflow
from harness import interleaved
from model import Person, generate

from operators import Context
from pipelines import sinks


def loop_calling(events: list[Any]) -> None:
    ctx: Context[Any] = Context()
    states: dict[str, Any] = {}
    for e in events:
        if type(e) is Person:
            continue
        key = str(e.auction)
        new = with_evflow.best_bid(states.get(key, []), e, ctx)
        ctx._timers = None
        if new is None:
            states.pop(key, None)
        else:
            states[key] = new


def read_and_filter(events: list[Any]) -> None:
    with_evflow.read(events, "parts").filter(
        lambda e: type(e) is not Person, name="auctions_and_bids"
    ).write(sinks.memory("o")).run()


def with_noop_process(events: list[Any]) -> None:
    with_evflow.read(events, "parts").filter(
        lambda e: type(e) is not Person, name="auctions_and_bids"
    ).key_by(lambda e: str(e.auction)).process(lambda s, e, ctx: s, initial=list).write(
        sinks.memory("o")
    ).run()


def _timed_only(fn: Callable[[list[Any]], Any], events: list[Any]) -> Callable[[], None]:
    """Run ``fn`` on the events for its time alone (the parts give different results)."""

    def run() -> None:
        fn(events)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    events = generate(args.events)
    parts: dict[str, Callable[[list[Any]], Any]] = {
        "bytewax q4": with_bytewax.q4,
        "loop calling best_bid": loop_calling,
        "evflow read and filter": read_and_filter,
        "evflow + key_by + process(no-op)": with_noop_process,
        "evflow q4": with_evflow.q4,
    }
    medians, _ = interleaved(
        {name: _timed_only(fn, events) for name, fn in parts.items()}, args.rounds
    )
    handled = sum(type(e) is not Person for e in events)
    print(f"\n{args.events:,} events ({handled:,} auctions and bids), medians:")
    for name, m in medians.items():
        print(f"  {name:34} {m:6.3f}s  {m / medians['bytewax q4']:5.2f}x bytewax q4's time")
    step = medians["evflow + key_by + process(no-op)"] - medians["evflow read and filter"]
    print(f"evflow's keyed process step on its own: {step / handled * 1e6:.2f} us per event")


if __name__ == "__main__":
    main()
