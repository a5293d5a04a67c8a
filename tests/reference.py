"""A tiny pure-Python interpreter of the logical graph: the oracle for property tests.

It walks the steps in the order they were added and keeps every port's records
in a list; it knows nothing of chunks, stages, fusion or workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from operators import schema_adapter
from pipelines import Pipeline


@dataclass
class Outcome:
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    dead: Counter[str] = field(default_factory=Counter)
    filtered: int = 0
    unrouted: int = 0


def interpret(pipeline: Pipeline) -> Outcome:
    outcome = Outcome()
    ports: dict[tuple[str, str | None], list[Any]] = {}

    def take(node: Any) -> list[Any]:
        records: list[Any] = []
        for port in node.inputs:
            records.extend(ports[(port.node.name, port.route)])
        return records

    for node in pipeline.graph:
        kind, fn, step = node.kind, node.fn, node.name
        if kind == "read":
            source = node.params["source"]
            records: list[Any] = []
            adapter = schema_adapter(source.schema) if source.schema is not None else None
            for item in source.items:
                if adapter is None:
                    records.append(item)
                    continue
                try:
                    records.append(
                        adapter.validate_json(item)
                        if isinstance(item, str | bytes)
                        else adapter.validate_python(item)
                    )
                except Exception:
                    outcome.dead[step] += 1
            ports[(step, None)] = records
            continue
        records = take(node)
        if kind == "write":
            outcome.outputs.setdefault(node.params["sink"].name, []).extend(records)
        elif kind == "forward":
            names = list(node.params["routes"])
            routed: dict[str | None, list[Any]] = {n: [] for n in names}
            otherwise = node.params["otherwise"]
            routed[otherwise] = []
            for x in records:
                hits = []
                try:
                    for n, pred in zip(names, fn, strict=True):
                        if pred(x):
                            hits.append(n)
                            if node.params["mode"] == "first":
                                break  # first match: later predicates are not asked
                except Exception:
                    outcome.dead[step] += 1
                    continue
                if not hits:
                    if otherwise is None:
                        outcome.unrouted += 1
                    else:
                        routed[otherwise].append(x)
                for n in hits:
                    routed[n].append(x)
            for n, lst in routed.items():
                if n is not None:
                    ports[(step, n)] = lst
        else:
            out: list[Any] = []
            for x in records:
                try:
                    if kind == "filter":
                        if fn(x):
                            out.append(x)
                        else:
                            outcome.filtered += 1
                    elif kind == "map":
                        out.append(fn(x))
                    elif kind == "flat_map":
                        values = list(fn(x))
                        if not values:
                            outcome.filtered += 1
                        out.extend(values)
                    elif kind == "inspect":
                        fn(x)
                        out.append(x)
                    elif kind == "key_by":
                        if not isinstance(fn(x), str):
                            raise TypeError("key must be str")
                        out.append(x)
                    elif kind == "merge":
                        out.append(x)
                    else:
                        raise AssertionError(f"reference: unknown step kind {kind}")
                except AssertionError:
                    raise
                except Exception:
                    outcome.dead[step] += 1
            ports[(step, None)] = out
    return outcome


def partition_marks(times: list[float], parts: int, delay: float) -> list[tuple[float, int, int]]:
    """Judge events the way a memory source splits them, each partition in its own order.

    ``times`` are the events' times in input order; the source cuts them into
    ``parts`` contiguous partitions. Returns, for each event, the watermark
    just before it (its partition's newest earlier time less ``delay``), its
    partition and its position in it: the batch size and the worker count
    change none of these.
    """
    import math

    out: list[tuple[float, int, int]] = []
    size, extra = divmod(len(times), parts)
    start = 0
    for p in range(parts):
        part = times[start : start + size + (1 if p < extra else 0)]
        start += len(part)
        newest = -math.inf
        for pos, ts in enumerate(part):
            out.append((newest - delay, p, pos))
            newest = max(newest, ts)
    return out
