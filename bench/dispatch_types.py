"""Dispatch benchmark: evflow's dispatch vs the classic event-bus loop, by type count.

Workload: 1,000,000 events spread over 1, 10, 100 and 1,000 event types, each
type with one trivial handler (it returns nothing), events made before timing.
(a) evflow ``dispatch`` on 1 worker, (b) evflow on 2 processes, (c) the classic
single-process event bus: a dict from type name to handler list, ``publish``
calling each handler's ``handle``. Every variant must deliver every event once.

Run: ``python bench/dispatch_types.py [--events N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from harness import interleaved, report

from operators import RunContext, Sink, Writer
from pipelines import Pipeline, sources

TYPE_COUNTS = (1, 10, 100, 1000)


class Base:
    """A plain event with get_type(), as in the classic event-bus example."""

    __slots__ = ("n",)
    name = "base"

    def __init__(self, n: int) -> None:
        self.n = n

    def get_type(self) -> str:
        return self.name


CLASSES = [type(f"T{i}", (Base,), {"__slots__": (), "name": f"t{i}"}) for i in range(1000)]


class Tally:
    """A trivial handler: counts what it handles (per process), returns nothing."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, event: Any) -> None:
        self.count += 1


class ClassicBus:
    def __init__(self) -> None:
        self.handlers: dict[str, list[Any]] = {}

    def register(self, event_type: str, handler: Any) -> None:
        self.handlers.setdefault(event_type, []).append(handler)

    def publish(self, event: Any) -> None:
        for handler in self.handlers.get(event.get_type(), []):
            handler.handle(event)


class _Nothing(Writer):
    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        return []


class NoSink(Sink):
    @property
    def label(self) -> str:
        return "nothing"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        return _Nothing()


def run_evflow(events: list[Base], types: int, processes: int = 1) -> int:
    tally = Tally()
    handlers = {cls: tally for cls in CLASSES[:types]}
    result = (
        Pipeline("bench_dispatch")
        .read(sources.memory(events, partitions=processes))
        .dispatch(handlers)
        .write(NoSink())
        .run(processes=processes)
    )
    return result.handled  # every delivery returned nothing: counted as handled


def run_classic(events: list[Base], types: int) -> int:
    bus = ClassicBus()
    tally = Tally()
    for cls in CLASSES[:types]:
        bus.register(cls.name, tally)
    for event in events:
        bus.publish(event)
    return tally.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    streams = {t: [CLASSES[i % t](i) for i in range(args.events)] for t in TYPE_COUNTS}
    variants: dict[str, Any] = {}
    for t, events in streams.items():
        # Every type count runs in every round, so noise falls on all alike.
        variants[f"evflow {t}"] = lambda e=events, n=t: run_evflow(e, n)
        variants[f"2 processes {t}"] = lambda e=events, n=t: run_evflow(e, n, processes=2)
        variants[f"classic {t}"] = lambda e=events, n=t: run_classic(e, n)
    med, delivered = interleaved(variants, args.rounds)
    assert delivered == args.events
    print(f"\n{args.events} events, {args.rounds} rounds, medians:")
    report(med, args.events)
    print("throughput ratios:")
    one = med["evflow 1"]
    for t in TYPE_COUNTS:
        print(
            f"  {t:5d} types: evflow {one / med[f'evflow {t}']:.2f}x its 1-type speed; "
            f"evflow {med[f'classic {t}'] / med[f'evflow {t}']:.2f}x classic; "
            f"2 processes {med[f'classic {t}'] / med[f'2 processes {t}']:.2f}x classic; "
            f"classic {med['classic 1'] / med[f'classic {t}']:.2f}x its 1-type speed"
        )
    print(
        "targets: 1000 types >= 0.9x the 1-type speed; evflow >= 0.5x classic; "
        "2 processes > 1.0x classic"
    )


if __name__ == "__main__":
    main()
