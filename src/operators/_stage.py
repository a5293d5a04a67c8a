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

import dis
import inspect
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import bytewax.operators as op
from bytewax.dataflow import Stream

from operators._deadletter import DeadLetter, ErrorKind, Origin, explain, payload_text
from operators._owned import owned
from operators._policy import ErrorPolicy, PipelineHalted

__all__ = [
    "COUNTER_FIELDS",
    "Chunk",
    "Counters",
    "Exit",
    "Node",
    "Packet",
    "ResumeError",
    "RunHalted",
    "StageOp",
    "Unreadable",
    "check_arity",
    "describe_function",
    "run_stage",
    "stage",
]

#: Records pushed through a stage at a time: a chunk of the default size (1,000)
#: goes through whole, a larger one in slices of this many. Each step's push has a
#: cost of its own, paid once a slice (cutting 1,000 records into slices of 128 made
#: NEXMark Q3 a third slower); slices bound how many records are alive at once.
SLICE = 1024

#: No value yet (not even None).
_UNSET = object()

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
    "late",
    "expired",
    "unfired",
    "early",
    "copies",
)
_IN, _OUT, _FILTERED, _UNROUTED, _DEAD, _SKIPPED, _CREATED = range(7)
_COPIES = COUNTER_FIELDS.index("copies")


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
    #: The partition's own name, where ``partition`` is another one to route
    #: it by (`testing.explore` deals partitions to workers anew so): the ids
    #: of records read without one are made from it.
    own_name: str | None = None
    #: On the empty chunk that says the partition has nothing to read: since
    #: when (wall-clock seconds). Only a source says a partition is idle.
    idle_since: float | None = None
    #: The watermark of a stream made by a step on event time (an aggregate,
    #: a join, a process step), after these records: the records to come of
    #: this partition (one key bucket of that step) are at or after it.
    mark: float | None = None
    #: For records made by a step on event time: ``(index in items, made_at)``
    #: where the records that step made at event time ``made_at`` start (a
    #: result's date, a process call's ``ctx.time``). The steps on event time
    #: after it judge each record against that, less their ``max_delay``, so a
    #: record dated before it is late or not whatever the batches. None: the
    #: records are not dated before their making (see `Notes`), and are
    #: judged against their partition's watermark.
    made: list[tuple[int, float | None]] | None = None
    #: Each record's own name in its partition, where it has one (a stream
    #: entry's id): dead letters carry it.
    keys: list[str] | None = None
    #: Each record's time at its broker (seconds since the epoch; None for a
    #: gap's letter), where the source knows it (a stream entry's): an event
    #: parsed without a ``time`` is dated by it, not by when it was parsed.
    times: list[float | None] | None = None
    #: Whether some records are `Unreadable` (the reader that made them says
    #: so): the read step dead-letters them with or without a schema.
    unreadable: bool = False
    #: Whether every record is immutable (the reader looked, `all_fixed`): the
    #: step's readers share them without looking again.
    fixed: bool = False

    def origin(self, index: int) -> Origin:
        """Return the origin of the record at ``index`` in this chunk."""
        return Origin(
            source=self.source,
            partition=self.partition,
            offset=self.offset + index,
            file=self.file,
            line=None if self.line is None else self.line + index,
            key=None if self.keys is None else self.keys[index],
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
    idle_since: float | None = None
    #: The watermark after the chunk (see `Chunk.mark`), for made streams.
    mark: float | None = None
    #: When the step before made its records (see `Chunk.made`): for each exit,
    #: its runs of records made at one time, as `Chunk.made` (None: not noted).
    made: list[list[tuple[int, float | None]] | None] | None = None

    @property
    def origin_id(self) -> str:
        """The source partition as one string: ``step/partition``."""
        return f"{self.source}/{self.partition}"


@dataclass
class Unreadable:
    """A record a reader could not make out: the parse step dead-letters it.

    ``text`` is what was read (undecodable bytes replaced), ``error`` why it
    could not be read; the dead letter carries the chunk's file and line.
    """

    text: str
    error: Exception
    #: The dead letter's kind: ``missing`` for messages a broker removed unread,
    #: ``user_error`` for a record a user's function failed to make.
    kind: ErrorKind = "parse"
    #: The function that failed (for a ``user_error``); the schema otherwise.
    function: str | None = None


class RunHalted(Exception):
    """Raised inside the engine to abort a halted run (the cause is in `Counters.halted`).

    A halt aborts the dataflow where it happens, like a crash: the engine
    never closes the epoch that holds the failing record, so no snapshot
    covers records whose results were not written, and a resumed run starts
    from a point at which every earlier record's effects are durable.
    """


class ResumeError(RuntimeError):
    """A step cannot resume from its snapshot: the recovery store is damaged or foreign."""

    @classmethod
    def of(cls, step: str, exc: BaseException, part: str | None = None) -> ResumeError:
        """Describe ``exc``, met while ``step`` (its partition ``part``) resumed."""
        where = f"step {step!r}" + (f" (partition {part!r})" if part is not None else "")
        msg = (
            f"{where} cannot resume from its snapshot ({type(exc).__name__}: {exc}): the "
            f"recovery store is damaged, or was written by another pipeline or another "
            f"version of this one"
        )
        return cls(msg)


class Counters:
    """Per-step counters, one table per worker thread, summed on demand.

    They also carry the run's halt: when a step with the ``halt`` policy
    fails (or a source or sink breaks), ``halted`` holds the exception and
    `RunHalted` aborts the engine at once (every worker that meets the halt
    raises it too); the runner then raises the kept exception, with no
    engine panic between the user and the cause.
    """

    def __init__(self, steps: Sequence[str]) -> None:
        """Make zeroed counters for ``steps``."""
        self.steps = list(steps)
        self._tables: dict[int, list[list[int]]] = {}
        self._lock = threading.Lock()
        self.halted: BaseException | None = None
        #: Called once when the dataflow starts on this process (its cluster formed).
        self.on_start: Callable[[], None] | None = None
        #: Event-time progress of windowed steps: ``(step, bucket) -> (watermark,
        #: newest event time)`` in epoch seconds, as each bucket last saw it.
        self.marks: dict[tuple[str, str], tuple[float, float]] = {}

    def started(self) -> None:
        """Say that the dataflow has started here (sources are being listed)."""
        if self.on_start is not None:
            self.on_start()

    def halt(self, exc: BaseException) -> NoReturn:
        """Stop the run because of ``exc`` (the first one is kept): raise `RunHalted`."""
        with self._lock:
            if self.halted is None:
                self.halted = exc
        raise RunHalted from exc

    def check_halted(self) -> None:
        """Raise `RunHalted` when another step or worker has halted the run."""
        if self.halted is not None:
            raise RunHalted

    def table(self) -> list[list[int]]:
        """Return this thread's table (created on first use)."""
        ident = threading.get_ident()
        table = self._tables.get(ident)
        if table is None:
            with self._lock:
                table = [[0] * len(COUNTER_FIELDS) for _ in self.steps]
                self._tables[ident] = table
        return table

    def progress(self) -> dict[str, tuple[float, float]]:
        """Return each windowed step's ``(watermark, newest event time)``.

        The watermark is the lowest over the step's buckets (what holds
        windows open); the newest event time the highest.
        """
        found: dict[str, tuple[float, float]] = {}
        for (step, _), (mark, newest) in list(self.marks.items()):
            low, high = found.get(step, (mark, newest))
            found[step] = (min(low, mark), max(high, newest))
        return found

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


_HOW_MANY = ("no argument", "one argument", "two arguments", "three arguments")


def check_arity(
    fn: Any,
    n: int,
    where: str,
    what: str,
    given: str,
    hint: str,
    *,
    sync: bool = True,
    iterates: bool = False,
) -> None:
    """Refuse ``fn`` when it cannot be called with ``n`` positional arguments.

    Found when the step is added, not at the first record. A function whose
    signature cannot be read (some builtins) is taken as it is. Unless the
    step awaits what it calls (``sync=False``: dispatch), an ``async def``
    is refused: called, it would only make a coroutine, never run. So is a
    generator function (one that yields) where the step takes one value
    (all but flat_map, ``iterates=True``, and dispatch): its body would never run.

    >>> check_arity(len, 1, "step 'm' (map)", "function", "the record", "map(len).")
    >>> def total(e, factor):
    ...     return e.amount * factor
    >>> check_arity(total, 1, "step 'm' (map)", "function", "the record",
    ...             "map(lambda e: e.amount).")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: step 'm' (map): function <...total line ...> takes (e, factor), but is called ...
    """
    if sync and _is_async(fn):
        msg = (
            f"{where}: {what} {describe_function(fn)} is an async function (async def), "
            f"which this step calls without awaiting: each call would make a coroutine that "
            f"never runs, and its result would be lost. Hint: make it a plain def, or hand "
            f"it to dispatch, whose handlers may be async."
        )
        raise TypeError(msg)
    if sync and not iterates and _yields(fn):
        msg = (
            f"{where}: {what} {describe_function(fn)} is a generator function (it yields), "
            f"which this step calls for one value: each call would make a generator whose "
            f"body never runs. Hint: return the value instead of yielding it, or use "
            f"flat_map to hand on each value a function yields."
        )
        raise TypeError(msg)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(n))
    except TypeError:
        msg = (
            f"{where}: {what} {describe_function(fn)} takes {signature}, but is called with "
            f"{_HOW_MANY[n]}{f' ({given})' if given else ''}. Hint: {hint}"
        )
        raise TypeError(msg) from None


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` makes a coroutine or an async generator (itself, or its __call__).

    >>> async def fetch(e): ...
    >>> _is_async(fetch), _is_async(len), _is_async(lambda e: e)
    (True, False, False)
    """
    return any(inspect.iscoroutinefunction(c) or inspect.isasyncgenfunction(c) for c in _called(fn))


def _called(fn: Any) -> list[Any]:
    """Return what runs when ``fn`` is called: itself, and an object's ``__call__``."""
    if not inspect.isroutine(fn) and callable(fn):
        return [fn, type(fn).__call__]
    return [fn]


def returns_nothing(fn: Any) -> bool:
    """Whether ``fn`` is a function every ``return`` of which gives None (no value at all).

    Told from its bytecode, so for functions written in Python; a function
    that only raises, a builtin or another callable is not.

    >>> def tag(e): e.tagged = True
    >>> def checked(e):
    ...     if e: return e
    >>> def either(e): return e if e else None
    >>> returns_nothing(tag), returns_nothing(checked), returns_nothing(either)
    (True, False, False)
    """
    code = getattr(fn, "__code__", None)
    if code is None or not isinstance(code, types.CodeType):
        return False
    steps = list(dis.get_instructions(code))
    returns = 0
    for i, step in enumerate(steps):
        if step.opname == "RETURN_CONST":
            returns += 1
            if step.argval is not None:
                return False
        elif step.opname == "RETURN_VALUE":
            returns += 1
            before = steps[i - 1] if i else None
            if (
                before is None
                or step.is_jump_target  # reached from elsewhere too: with another value
                or before.opname != "LOAD_CONST"
                or before.argval is not None
            ):
                return False
    return returns > 0


def _yields(fn: Any) -> bool:
    """Whether calling ``fn`` (itself, or its __call__) makes a generator.

    >>> def each(e): yield e
    >>> _yields(each), _yields(len), _yields(lambda e: (x for x in e))
    (True, False, False)
    """
    return any(inspect.isgeneratorfunction(c) for c in _called(fn))


class _Run:
    """What one chunk's processing needs: counters, origin, dead letters."""

    __slots__ = ("base", "chunk", "dead", "dropped", "exit_made", "made", "pipeline", "table")

    def __init__(self, pipeline: str, chunk: Chunk, table: list[list[int]]) -> None:
        self.pipeline = pipeline
        self.chunk = chunk
        self.table = table
        self.base = 0
        self.dead: list[DeadLetter] = []
        #: Following when records were made (`Chunk.made`) record by record: the
        #: making time of each record a node is handed, beside them (None: not).
        self.made: list[float | None] | None = None
        #: The making times of each exit's records, beside them.
        self.exit_made: list[list[float | None]] = []
        #: Where a map's records failed (their making times are left out).
        self.dropped: list[int] = []


class Node:
    """A node of the stage tree: something that receives a list of records."""

    #: Whether the node hands on when each record was made (`_Run.made`): it
    #: says, for what it hands on, which records it was handed they come from.
    keeps_made = False

    def children(self) -> list[Node]:
        """Return the nodes it hands records to."""
        return []

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Receive ``items`` and pass what comes out to the next nodes."""
        raise NotImplementedError

    def push_keyed(
        self, items: list[Any], keys: list[str], run: _Run, out: list[list[Any]]
    ) -> None:
        """Receive ``items`` with their keys (a keyed step uses them; others need not)."""
        self.push(items, run, out)


class Exit(Node):
    """A leaf: records that reach it leave the stage through exit ``index``."""

    def __init__(self, index: int) -> None:
        """Make exit number ``index``."""
        self.index = index

    keeps_made = True

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Collect the records for this exit."""
        if items:
            slot = out[self.index]
            if slot:
                slot.extend(items)
            else:
                out[self.index] = items
            if run.made is not None:
                run.exit_made[self.index].extend(run.made)


def _fan_out(
    nexts: Sequence[Node],
    items: list[Any],
    run: _Run,
    out: list[list[Any]],
    row: list[int],
    keys: tuple[Callable[[Any], Any], list[str]] | None = None,
    fixed: bool = False,
) -> None:
    """Hand ``items`` to each next node; ``keys`` are the items' keys and their function.

    ``fixed``: every item is immutable (`Chunk.fixed`), so the readers share them.

    A keyed step after a key_by step with the same key function takes the
    keys as they are (``push_keyed``) instead of calling the function again.
    """

    def hand(node: Node, records: list[Any]) -> None:
        if keys is not None and getattr(node, "key", None) is keys[0]:
            node.push_keyed(records, keys[1], run, out)
        else:
            node.push(records, run, out)

    if len(nexts) == 1:
        hand(nexts[0], items)
        return
    # Every further consumer of the same list gets a copy of each record:
    # counted apart, so that "out" stays what the step handed on. Each reader
    # but the last gets its own copies of mutable records, made before the
    # last, which takes the records themselves, changes them (`own`).
    row[_COPIES] += len(items) * (len(nexts) - 1)
    made = run.made
    last = len(nexts) - 1
    for i, node in enumerate(nexts):
        run.made = made  # what the node before handed on, whatever the last one did
        if i == last:
            hand(node, items)
        else:
            hand(node, list(items) if fixed else owned(items))


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

    #: A step whose records come out as they went in, or fewer, in order (a
    #: filter, a map, a key): `lineage` follows when they were made.
    keeps_made = True

    def children(self) -> list[Node]:
        """Return the nodes it hands records to."""
        return self.nexts

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Apply this step and hand the result on."""
        row = run.table[self.index]
        row[_IN] += len(items)
        made = run.made
        if made is not None:
            run.dropped = []
        result = self.apply(items, run, row)
        row[_OUT] += len(result)
        if made is not None:
            run.made = self.lineage(items, result, made, run)
        _fan_out(self.nexts, result, run, out, row)

    def lineage(
        self, items: list[Any], result: list[Any], made: list[float | None], run: _Run
    ) -> list[float | None]:
        """Return when each record of ``result`` was made, given ``made`` for ``items``.

        The records that passed are those of ``items`` in order (a filter keeps
        the same objects); a map's outputs are new, so a map says which inputs
        failed (``run.dropped``).
        """
        if len(result) == len(items):
            return made
        if run.dropped:
            gone = set(run.dropped)
            return [m for i, m in enumerate(made) if i not in gone]
        return kept_made(items, result, made)

    def call(self, item: Any) -> Any:
        """Call the user function once (used again by retries)."""
        return self.fn(item)

    def recover(
        self,
        item: Any,
        exc: Exception,
        run: _Run,
        row: list[int],
        *,
        kind: ErrorKind | None = None,
        function: str | Literal[False] | None = False,
        message: str | None = None,
        error_type: str | None = None,
    ) -> tuple[bool, Any]:
        """Apply the error policy to a failing record.

        Returns ``(True, result)`` when a retry succeeded, else ``(False, None)``
        after counting the record as skipped or dead-lettered. A dead letter
        is of the step's kind, names its function and says the exception,
        unless ``kind``, ``function`` (None: no function), ``message`` or
        ``error_type`` say otherwise.
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
        named = self.function if function is False else function
        if policy.mode == "halt":
            shown = "reading the event's time" if named is None else named
            raise PipelineHalted(run.pipeline, self.step, shown, payload) from exc
        row[_DEAD] += 1
        run.dead.append(
            DeadLetter.build(
                pipeline=run.pipeline,
                step=self.step,
                kind=self.error_kind if kind is None else kind,
                error_type=type(exc).__qualname__ if error_type is None else error_type,
                message=explain(exc) if message is None else message,
                function=named,
                payload=payload,
                event_time=getattr(item, "time", None),
                attempts=attempts,
            )
        )
        return False, None


def kept_made(items: list[Any], kept: list[Any], made: list[float | None]) -> list[float | None]:
    """Return when each of ``kept`` was made: the same objects as some of ``items``, in order.

    >>> a, b, c = object(), object(), object()
    >>> kept_made([a, b, c], [a, c], [1.0, 2.0, 3.0])
    [1.0, 3.0]
    """
    found: list[float | None] = []
    j = 0
    for x, m in zip(items, made, strict=True):
        if j < len(kept) and kept[j] is x:
            found.append(m)
            j += 1
    return found


def run_stage(
    roots: Sequence[Node],
    exits: int,
    pipeline: str,
    counters: Counters,
    chunks: Iterable[Chunk],
    followed: bool = False,
    one_by_one: bool = False,
) -> list[Packet]:
    """Push each chunk through the stage tree and return one packet each.

    A chunk whose records say when they were made (`Chunk.made`) goes
    through whole where every node of the tree follows that (``followed``,
    see `Node.keeps_made`), else one run of records made at one time at a time.
    ``one_by_one``: each record goes through alone, so that an exit several
    paths of the tree reach (a merge of two routes) gets what each record
    made before what the next did: the partition's order.
    """
    table = counters.table()
    packets: list[Packet] = []
    for chunk in chunks:
        counters.check_halted()
        run = _Run(pipeline, chunk, table)
        out: list[list[Any]] = [[] for _ in range(exits)]
        made: list[list[tuple[int, float | None]] | None] | None = None
        step = 1 if one_by_one else SLICE
        if chunk.made is None:
            _push(roots, chunk.items, 0, len(chunk.items), run, out, counters, step=step)
        else:
            run.exit_made = [[] for _ in range(exits)]
            if followed:
                each = _each_made(chunk.made, len(chunk.items))
                _push(roots, chunk.items, 0, len(chunk.items), run, out, counters, each, step)
            else:
                ends = [at for at, _ in chunk.made[1:]] + [len(chunk.items)]
                for (begin, made_at), end in zip(chunk.made, ends, strict=True):
                    before = [len(o) for o in out]
                    _push(roots, chunk.items, begin, end, run, out, counters, step=step)
                    for times, o, n in zip(run.exit_made, out, before, strict=True):
                        times += [made_at] * (len(o) - n)
            made = [_made_runs(times) for times in run.exit_made]
        packets.append(
            Packet(
                out,
                run.dead,
                chunk.source,
                chunk.partition,
                chunk.eof,
                chunk.idle_since,
                chunk.mark,
                made,
            )
        )
    return packets


def _push(
    roots: Sequence[Node],
    items: list[Any],
    begin: int,
    end: int,
    run: _Run,
    out: list[list[Any]],
    counters: Counters,
    made: list[float | None] | None = None,
    step: int = SLICE,
) -> None:
    """Push ``items[begin:end]`` (made at ``made``, record by record) through the tree.

    ``step`` records at a time: a large chunk in slices (`SLICE`), fewer records
    alive at once; or one by one (see `run_stage`).
    """
    for start in range(begin, end, step):
        stop = min(start + step, end)
        part = items if start == 0 and stop == len(items) else items[start:stop]
        run.base = start
        try:
            last = len(roots) - 1
            for i, root in enumerate(roots):
                if made is not None:
                    run.made = made[start:stop]
                root.push(part if i == last else owned(part), run, out)
        except RunHalted:
            raise
        except BaseException as exc:  # noqa: BLE001 - a halt, a fault, a user's stop
            # Kept for the runner, which raises it in this process (a
            # KeyboardInterrupt from a user function included) instead of
            # the engine's panic, which loses it on several processes.
            counters.halt(exc)
    run.made = None


def _each_made(runs: list[tuple[int, float | None]], size: int) -> list[float | None]:
    """Return when each of ``size`` records was made, from its runs (`Chunk.made`).

    >>> _each_made([(0, 5.0), (2, None), (3, 7.0)], 4)
    [5.0, 5.0, None, 7.0]
    """
    each: list[float | None] = []
    ends = [at for at, _ in runs[1:]] + [size]
    for (begin, made_at), end in zip(runs, ends, strict=True):
        each += [made_at] * (end - begin)
    return each


def _made_runs(times: list[float | None]) -> list[tuple[int, float | None]] | None:
    """Return the runs of records made at one time, from each record's (None: none noted).

    >>> _made_runs([5.0, 5.0, None, 7.0]), _made_runs([None, None]), _made_runs([])
    ([(0, 5.0), (2, None), (3, 7.0)], None, None)
    """
    runs: list[tuple[int, float | None]] = []
    last: Any = _UNSET
    for i, made_at in enumerate(times):
        if made_at != last:
            runs.append((i, made_at))
            last = made_at
    if len(runs) == 1 and runs[0][1] is None:
        return None
    return runs or None


def follows_made(node: Node) -> bool:
    """Whether every node from ``node`` on follows when records were made (`Node.keeps_made`)."""
    return node.keeps_made and all(follows_made(child) for child in node.children())


def stage(
    step_id: str,
    up: Stream[Chunk],
    roots: Sequence[Node],
    exits: int,
    pipeline: str,
    counters: Counters,
    *,
    one_by_one: bool = False,
) -> Stream[Packet]:
    """Run a fused stage over a stream of chunks (a bytewax operator).

    Each chunk becomes one `Packet` holding what reached each exit;
    ``one_by_one``: record by record (see `run_stage`).
    """
    followed = all(follows_made(root) for root in roots)

    def mapper(chunks: list[Chunk]) -> list[Packet]:
        return run_stage(roots, exits, pipeline, counters, chunks, followed, one_by_one)

    return op.flat_map_batch(step_id, up, mapper)
