"""The fused stateless stage: many logical steps in one bytewax step.

A *stage* is a tree of stateless operations (parse, filter, map, flat_map,
inspect, key checks, forward) rooted at one input stream. The compiler turns
each such tree into one bytewax ``flat_map_batch`` step. Records travel as
`Chunk` values (a list of records and where they came from), so bytewax's
per-item cost is paid once per chunk, and each operation runs over a whole
list at a time. A failing record is taken out of the list and handled by the
step's error policy; the rest of the list goes on.

The stage emits one `Packet` per chunk: the records that reached each exit of
the tree (a sink, a later stage, the dead letters).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from pydantic import BaseModel, TypeAdapter, ValidationError

from operators._deadletter import DeadLetter, ErrorKind, Origin, payload_text
from operators._policy import ErrorPolicy, PipelineHalted

__all__ = [
    "COUNTER_FIELDS",
    "Chunk",
    "Counters",
    "Exit",
    "FilterOp",
    "FlatMapOp",
    "ForwardOp",
    "InspectOp",
    "IsInstance",
    "KeyCheckOp",
    "MapOp",
    "Node",
    "Packet",
    "ParseOp",
    "StageOp",
    "describe_function",
    "run_stage",
    "stage",
]

#: Records pushed through a stage at a time (a chunk is cut into slices).
SLICE = 128

#: Per-step counters, in this order.
COUNTER_FIELDS = (
    "in",
    "out",
    "filtered",
    "unrouted",
    "dead",
    "skipped",
    "created",
    "aggregated",
    "open",
    "handled",
)
_IN, _OUT, _FILTERED, _UNROUTED, _DEAD, _SKIPPED, _CREATED = range(7)


@dataclass
class Chunk:
    """A list of records with their origin.

    ``offset`` is the position of the first record within its partition;
    ``line`` is the line number of the first record when it came from a file.
    """

    items: list[Any]
    source: str
    partition: str
    offset: int = 0
    file: str | None = None
    line: int | None = None
    #: True for the empty chunk that says the partition has ended.
    eof: bool = False

    def origin(self, index: int) -> Origin:
        """Return the origin of the record at ``index`` in this chunk."""
        return Origin(
            source=self.source,
            partition=self.partition,
            offset=self.offset + index,
            file=self.file,
            line=None if self.line is None else self.line + index,
        )


@dataclass
class Packet:
    """What one chunk produced: records per exit, plus its dead letters.

    ``source`` and ``partition`` name the source partition the chunk came
    from, and ``eof`` says that partition has ended (event-time windows
    track progress per partition).
    """

    exits: list[list[Any]]
    dead: list[DeadLetter] = field(default_factory=list)
    source: str = ""
    partition: str = ""
    eof: bool = False

    @property
    def origin_id(self) -> str:
        """The source partition as one string: ``step/partition``."""
        return f"{self.source}/{self.partition}"


class Counters:
    """Per-step counters, one table per worker thread, summed on demand.

    They also carry the run's halt: when a step with the ``halt`` policy
    fails (or a source or sink breaks), ``halted`` holds the exception;
    sources then stop reading and stages drop what is still in flight, so the
    run ends cleanly and the runner raises it, with no engine panic between
    the user and the cause.
    """

    def __init__(self, steps: Sequence[str]) -> None:
        """Make zeroed counters for ``steps``."""
        self.steps = list(steps)
        self._tables: dict[int, list[list[int]]] = {}
        self._lock = threading.Lock()
        self.halted: BaseException | None = None

    def halt(self, exc: BaseException) -> None:
        """Stop the run because of ``exc`` (the first one is kept)."""
        with self._lock:
            if self.halted is None:
                self.halted = exc

    def table(self) -> list[list[int]]:
        """Return this thread's table (created on first use)."""
        ident = threading.get_ident()
        table = self._tables.get(ident)
        if table is None:
            with self._lock:
                table = [[0] * len(COUNTER_FIELDS) for _ in self.steps]
                self._tables[ident] = table
        return table

    def totals(self) -> dict[str, dict[str, int]]:
        """Sum the tables of every thread, by step name."""
        sums = [[0] * len(COUNTER_FIELDS) for _ in self.steps]
        for table in list(self._tables.values()):
            for row, total in zip(table, sums, strict=True):
                for i, value in enumerate(row):
                    total[i] += value
        return {
            step: dict(zip(COUNTER_FIELDS, row, strict=True))
            for step, row in zip(self.steps, sums, strict=True)
        }


def describe_function(fn: Any) -> str:
    """Name a user function the way error messages show it.

    >>> def is_big(e): return True
    >>> "is_big line " in describe_function(is_big)
    True
    >>> "lambda line " in describe_function(lambda e: e)
    True
    """
    target = fn if callable(fn) and hasattr(fn, "__code__") else type(fn)
    name = (getattr(fn, "__qualname__", None) or type(fn).__qualname__).strip("<>")
    module = getattr(fn, "__module__", None)
    code = getattr(target, "__code__", None)
    where = f" line {code.co_firstlineno}" if code is not None else ""
    prefix = f"{module}." if module not in (None, "__main__", "builtins") else ""
    return f"<{prefix}{name}{where}>"


class _Run:
    """What one chunk's processing needs: counters, origin, dead letters."""

    __slots__ = ("base", "chunk", "dead", "pipeline", "table")

    def __init__(self, pipeline: str, chunk: Chunk, table: list[list[int]]) -> None:
        self.pipeline = pipeline
        self.chunk = chunk
        self.table = table
        self.base = 0
        self.dead: list[DeadLetter] = []


class Node:
    """A node of the stage tree: something that receives a list of records."""

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Receive ``items`` and pass what comes out to the next nodes."""
        raise NotImplementedError


class Exit(Node):
    """A leaf: records that reach it leave the stage through exit ``index``."""

    def __init__(self, index: int) -> None:
        """Make exit number ``index``."""
        self.index = index

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Collect the records for this exit."""
        if items:
            slot = out[self.index]
            if slot:
                slot.extend(items)
            else:
                out[self.index] = items


def _fan_out(
    nexts: Sequence[Node], items: list[Any], run: _Run, out: list[list[Any]], row: list[int]
) -> None:
    if len(nexts) == 1:
        nexts[0].push(items, run, out)
        return
    # Every further consumer of the same list gets a copy of each record:
    # the step handed on more records than it made.
    extra = len(items) * (len(nexts) - 1)
    row[_CREATED] += extra
    row[_OUT] += extra
    for node in nexts:
        node.push(list(items), run, out)


class StageOp(Node):
    """A stateless step: a user function applied over a list of records."""

    kind = "step"
    error_kind: ErrorKind = "user_error"

    def __init__(
        self, step: str, index: int, fn: Any, policy: ErrorPolicy, nexts: Sequence[Node] = ()
    ) -> None:
        """Make step ``step`` (counter row ``index``) calling ``fn``."""
        self.step = step
        self.index = index
        self.fn = fn
        self.policy = policy
        self.nexts: list[Node] = list(nexts)
        self.function = describe_function(fn)

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Transform a list of records."""
        raise NotImplementedError

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Apply this step and hand the result on."""
        row = run.table[self.index]
        row[_IN] += len(items)
        result = self.apply(items, run, row)
        row[_OUT] += len(result)
        _fan_out(self.nexts, result, run, out, row)

    def call(self, item: Any) -> Any:
        """Call the user function once (used again by retries)."""
        return self.fn(item)

    def recover(self, item: Any, exc: Exception, run: _Run, row: list[int]) -> tuple[bool, Any]:
        """Apply the error policy to a failing record.

        Returns ``(True, result)`` when a retry succeeded, else ``(False, None)``
        after counting the record as skipped or dead-lettered.
        """
        policy = self.policy
        attempts = 1
        if policy.mode == "retry":
            while attempts < policy.attempts:
                if policy.backoff:
                    time.sleep(policy.backoff * 2 ** (attempts - 1))
                attempts += 1
                try:
                    return True, self.call(item)
                except Exception as again:  # noqa: BLE001 - the policy decides
                    exc = again
        if policy.mode == "skip":
            row[_SKIPPED] += 1
            return False, None
        payload = payload_text(item)
        if policy.mode == "halt":
            raise PipelineHalted(run.pipeline, self.step, self.function, payload) from exc
        row[_DEAD] += 1
        run.dead.append(
            DeadLetter.build(
                pipeline=run.pipeline,
                step=self.step,
                kind=self.error_kind,
                error_type=type(exc).__qualname__,
                message=str(exc),
                function=self.function,
                payload=payload,
                event_time=getattr(item, "time", None),
                attempts=attempts,
            )
        )
        return False, None


class IsInstance:
    """The predicate of a class filter (``filter(View)``); stages run it inline.

    >>> IsInstance(int)(3), IsInstance(int).__name__
    (True, 'is_int')
    """

    def __init__(self, cls: type) -> None:
        """Match instances of ``cls``."""
        self.cls = cls
        self.__name__ = f"is_{cls.__name__}"
        self.__qualname__ = self.__name__

    def __call__(self, item: Any) -> bool:
        """Whether ``item`` is an instance of the class."""
        return isinstance(item, self.cls)


class FilterOp(StageOp):
    """Keep the records for which the predicate is true."""

    kind = "filter"

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Filter a list."""
        fn = self.fn
        if isinstance(fn, IsInstance):
            # A class test cannot fail: one comprehension, no calls per record.
            cls = fn.cls
            kept_ = [x for x in items if isinstance(x, cls)]
            row[_FILTERED] += len(items) - len(kept_)
            return kept_
        kept: list[Any] = []
        append = kept.append
        failed = 0
        it = iter(items)
        while True:
            try:
                for x in it:
                    if fn(x):
                        append(x)
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, value = self.recover(x, exc, run, row)
                if not ok:
                    failed += 1
                elif value:
                    append(x)
        row[_FILTERED] += len(items) - len(kept) - failed
        return kept


class MapOp(StageOp):
    """Replace each record with the function's result."""

    kind = "map"

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Map a list."""
        fn = self.fn
        result: list[Any] = []
        append = result.append
        it = iter(items)
        while True:
            try:
                for x in it:
                    append(fn(x))
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, value = self.recover(x, exc, run, row)
                if ok:
                    append(value)
        return result


class FlatMapOp(StageOp):
    """Replace each record with zero or more records."""

    kind = "flat_map"

    def call(self, item: Any) -> Any:
        """Call the function and materialise what it returns."""
        return list(self.fn(item))

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Flat-map a list; an input giving nothing counts as filtered."""
        call = self.call
        result: list[Any] = []
        extend = result.extend
        empty = 0
        failed = 0
        it = iter(items)
        while True:
            try:
                for x in it:
                    values = call(x)
                    if values:
                        extend(values)
                    else:
                        empty += 1
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, values = self.recover(x, exc, run, row)
                if not ok:
                    failed += 1
                elif values:
                    extend(values)
                else:
                    empty += 1
        row[_FILTERED] += empty
        # Each input that gave k > 1 records created k - 1 new ones.
        row[_CREATED] += len(result) - (len(items) - empty - failed)
        return result


class InspectOp(StageOp):
    """Call a function on each record for its side effect; pass records on."""

    kind = "inspect"

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Inspect a list."""
        fn = self.fn
        passed: list[Any] = []
        append = passed.append
        it = iter(items)
        while True:
            try:
                for x in it:
                    fn(x)
                    append(x)
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, _ = self.recover(x, exc, run, row)
                if ok:
                    append(x)
        return passed


class KeyCheckOp(StageOp):
    """Compute each record's key, which must be a string; pass records on."""

    kind = "key_by"
    error_kind: ErrorKind = "key_error"

    def call(self, item: Any) -> Any:
        """Compute and check one key."""
        key = self.fn(item)
        if not isinstance(key, str):
            msg = (
                f"step {self.step!r} (key_by): key function {self.function} must "
                f"return str; got {type(key).__name__} {key!r}. Hint: convert it, "
                f"for example key_by(lambda e: str(e.user_id))."
            )
            raise TypeError(msg)
        return key

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Check the keys of a list."""
        call = self.call
        passed: list[Any] = []
        append = passed.append
        it = iter(items)
        while True:
            try:
                for x in it:
                    call(x)
                    append(x)
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, _ = self.recover(x, exc, run, row)
                if ok:
                    append(x)
        return passed


def _place(
    x: Any, hits: list[int], lists: list[list[Any]], rest: list[Any], row: list[int]
) -> None:
    """Put a record on every route it matched (a copy past the first), or aside."""
    if not hits:
        rest.append(x)
    for i in hits:
        lists[i].append(x)
    if len(hits) > 1:
        row[_CREATED] += len(hits) - 1


class _RouteError(Exception):
    def __init__(self, item: Any, error: Exception) -> None:
        self.item = item
        self.error = error


class ForwardOp(StageOp):
    """Route each record to named branches by predicates.

    ``mode="first"`` sends a record to the first route whose predicate holds;
    ``mode="all"`` copies it to every such route. Records matching none go
    to the ``otherwise`` branch when there is one, or are counted unrouted.
    """

    kind = "forward"

    def __init__(
        self,
        step: str,
        index: int,
        predicates: Sequence[Callable[[Any], bool]],
        policy: ErrorPolicy,
        *,
        mode: str,
        branches: Sequence[Sequence[Node]],
        otherwise: Sequence[Node] | None,
    ) -> None:
        """Make a router over ``predicates`` with one branch each."""
        super().__init__(step, index, predicates, policy)
        self.predicates = list(predicates)
        self.mode = mode
        self.branches = [list(b) for b in branches]
        self.otherwise = None if otherwise is None else list(otherwise)
        self.function = ", ".join(describe_function(p) for p in self.predicates)

    def call(self, item: Any) -> Any:
        """Return the indexes of the routes the record goes to."""
        hits = []
        for i, pred in enumerate(self.predicates):
            if pred(item):
                hits.append(i)
                if self.mode == "first":
                    break
        return hits

    def _first(self, it: Iterator[Any], lists: list[list[Any]], rest: list[Any]) -> None:
        x = None
        try:
            if len(self.predicates) == 1:
                pred = self.predicates[0]
                hit = lists[0].append
                miss = rest.append
                for x in it:
                    if pred(x):
                        hit(x)
                    else:
                        miss(x)
                return
            pairs = [(pred, lst.append) for pred, lst in zip(self.predicates, lists, strict=True)]
            miss = rest.append
            for x in it:
                for pred, hit in pairs:
                    if pred(x):
                        hit(x)
                        break
                else:
                    miss(x)
        except Exception as exc:
            raise _RouteError(x, exc) from exc

    def _all(
        self, it: Iterator[Any], lists: list[list[Any]], rest: list[Any], row: list[int]
    ) -> None:
        x = None
        try:
            for x in it:
                _place(x, self.call(x), lists, rest, row)
        except Exception as exc:
            raise _RouteError(x, exc) from exc

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Split a list over the branches."""
        row = run.table[self.index]
        row[_IN] += len(items)
        lists: list[list[Any]] = [[] for _ in self.predicates]
        rest: list[Any] = []
        it = iter(items)
        while True:
            try:
                if self.mode == "first":
                    self._first(it, lists, rest)
                else:
                    self._all(it, lists, rest, row)
                break
            except _RouteError as failure:
                x = failure.item
                ok, hits = self.recover(x, failure.error, run, row)
                if ok:
                    _place(x, hits, lists, rest, row)
        routed = sum(len(lst) for lst in lists)
        row[_OUT] += routed
        for branch, lst in zip(self.branches, lists, strict=True):
            _fan_out(branch, lst, run, out, row)
        if self.otherwise is None:
            row[_UNROUTED] += len(rest)
        else:
            row[_OUT] += len(rest)
            _fan_out(self.otherwise, rest, run, out, row)

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Unused: forward overrides `push`."""
        raise NotImplementedError


class ParseOp(StageOp):
    """Turn raw records (JSON text, dicts) into events with one validator.

    Events that are already instances pass through. A record that is not
    valid JSON is a ``parse`` dead letter; one that breaks the schema is a
    ``validation`` dead letter carrying pydantic's structured errors.
    """

    kind = "parse"

    def __init__(
        self,
        step: str,
        index: int,
        adapter: TypeAdapter[Any] | None,
        policy: ErrorPolicy,
        nexts: Sequence[Node] = (),
    ) -> None:
        """Make a parse step with a compiled validator (None: pass records on)."""
        super().__init__(step, index, None, policy, nexts)
        self.adapter = adapter
        self.function = "schema"
        if adapter is not None:
            # The compiled validator itself: no Python wrapper per record.
            validator = getattr(adapter, "validator", None)
            self.parse_json = getattr(validator, "validate_json", adapter.validate_json)
            self.parse_python = getattr(validator, "validate_python", adapter.validate_python)

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Parse a list; dead letters carry the record's origin."""
        row = run.table[self.index]
        if self.adapter is None:
            row[_IN] += len(items)
            row[_OUT] += len(items)
            _fan_out(self.nexts, items, run, out, row)
            return
        events: list[Any] = []
        append = events.append
        blank = 0
        # Failures are kept without their tracebacks: a traceback holds this
        # frame, whose locals hold the failures list, and that cycle would
        # leave the whole slice of events for the garbage collector.
        failures: list[tuple[int, Any, Exception]] = []
        if items and isinstance(items[0], bytes | str):
            # Fast path for raw text: one compiled call per record. Anything
            # unusual (blank lines, non-text records) goes by the slow path.
            parse = self.parse_json
            index = 0
            it = iter(items)
            while True:
                try:
                    for x in it:
                        append(parse(x))
                        index += 1
                    break
                except Exception as exc:  # noqa: BLE001 - looked at below
                    if not isinstance(x, bytes | str):
                        try:
                            append(self.parse_one(x))
                        except Exception as other:  # noqa: BLE001 - dead-lettered
                            failures.append((index, x, other.with_traceback(None)))
                    elif x.strip():
                        failures.append((index, x, exc.with_traceback(None)))
                    else:
                        blank += 1
                    index += 1
        else:
            for index, x in enumerate(items):
                try:
                    append(self.parse_one(x))
                except Exception as exc:  # noqa: BLE001 - dead-lettered below
                    failures.append((index, x, exc.with_traceback(None)))
        row[_IN] += len(items) - blank
        for position, raw, error in failures:
            self._fail(position, raw, error, run, row)
        row[_OUT] += len(events)
        _fan_out(self.nexts, events, run, out, row)

    def parse_one(self, x: Any) -> Any:
        """Parse one record of any form: text, an event, a mapping."""
        if isinstance(x, BaseModel):
            return x
        if isinstance(x, bytes | str):
            return self.parse_json(x)
        return self.parse_python(x)

    def _fail(self, position: int, raw: Any, exc: Exception, run: _Run, row: list[int]) -> None:
        if self.policy.mode == "skip":
            row[_SKIPPED] += 1
            return
        payload = payload_text(raw)
        if self.policy.mode == "halt":
            raise PipelineHalted(run.pipeline, self.step, "schema", payload) from exc
        errors = None
        kind: ErrorKind = "parse"
        message = str(exc)
        if isinstance(exc, ValidationError):
            errors = [_plain(e) for e in exc.errors(include_url=False)]
            if not any(e["type"] == "json_invalid" for e in errors):
                kind = "validation"
            message = f"{exc.error_count()} validation error(s) for {exc.title}"
        row[_DEAD] += 1
        run.dead.append(
            DeadLetter.build(
                pipeline=run.pipeline,
                step=self.step,
                kind=kind,
                error_type=type(exc).__qualname__,
                message=message,
                function="schema",
                errors=errors,
                payload=payload,
                origin=run.chunk.origin(run.base + position),
            )
        )

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Unused: parse overrides `push`."""
        raise NotImplementedError


def _plain(error: Any) -> dict[str, Any]:
    # pydantic puts the offending input and context values in errors; keep
    # them as text so dead letters stay serialisable.
    plain = dict(error)
    if "input" in plain:
        plain["input"] = payload_text(plain["input"])[:200]
    if "ctx" in plain:
        plain["ctx"] = {k: str(v) for k, v in plain["ctx"].items()}
    plain["loc"] = [str(p) for p in plain.get("loc", ())]
    return plain


def run_stage(
    roots: Sequence[Node], exits: int, pipeline: str, counters: Counters, chunks: Iterable[Chunk]
) -> list[Packet]:
    """Push each chunk through the stage tree and return one packet each."""
    table = counters.table()
    packets: list[Packet] = []
    step = SLICE
    for chunk in chunks:
        if counters.halted is not None:
            break
        run = _Run(pipeline, chunk, table)
        out: list[list[Any]] = [[] for _ in range(exits)]
        items = chunk.items
        # Work through a chunk in slices: few records are alive at once, so
        # they die young (cheap for the garbage collector) and stay in cache.
        for start in range(0, len(items), step):
            part = items[start : start + step] if len(items) > step else items
            run.base = start
            try:
                for i, root in enumerate(roots):
                    root.push(part if i == 0 else list(part), run, out)
            except Exception as exc:  # noqa: BLE001 - a halt, or a fault of evflow's own
                counters.halt(exc)
                return packets
        packets.append(Packet(out, run.dead, chunk.source, chunk.partition, chunk.eof))
    return packets


def stage(
    step_id: str,
    up: Stream[Chunk],
    roots: Sequence[Node],
    exits: int,
    pipeline: str,
    counters: Counters,
) -> Stream[Packet]:
    """Run a fused stage over a stream of chunks (a bytewax operator).

    Each chunk becomes one `Packet` holding what reached each exit.
    """

    def mapper(chunks: list[Chunk]) -> list[Packet]:
        return run_stage(roots, exits, pipeline, counters, chunks)

    return op.flat_map_batch(step_id, up, mapper)
