"""Sinks: where records go. `PacketSink` writes a stage's packets to them.

An evflow sink opens one writer per worker. The compiler gathers every sink
fed by one stage into a single bytewax output step (`PacketSink`): each
packet's lists go to their sinks, and its dead letters to the dead-letter sink.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from operators._deadletter import (
    DeadLetter,
    count_dead,
    finite,
    json_text,
    jsonable,
    payload_text,
)
from operators._sources import CODECS, SUFFIXES, TAIL, digest, file_path, slug, tail_before
from operators._stage import (
    COUNTER_FIELDS,
    Counters,
    Packet,
    ResumeError,
    check_arity,
    describe_function,
)

__all__ = [
    "DEAD_LETTERS_KEPT",
    "CallbackSink",
    "ExactOutput",
    "ExactSink",
    "ExactWriter",
    "JsonlSink",
    "MemorySink",
    "OutputChangedError",
    "PacketSink",
    "RunContext",
    "Sink",
    "StdoutSink",
    "Writer",
]


#: How many dead letters a run keeps in memory when it writes them to no sink
#: (`Pipeline.dead_letters`): a bounded sample, so that millions of bad
#: records cannot exhaust memory; the counts by step and kind stay exact.
DEAD_LETTERS_KEPT = 10_000


class RunContext:
    """What one run shares between its workers: collected outputs, resources."""

    def __init__(self, pipeline: str, *, append_files: bool = False) -> None:
        """Start an empty context for ``pipeline``.

        With ``append_files`` (one process of several), file sinks append to
        files the parent process truncated, instead of truncating them.
        """
        self.pipeline = pipeline
        self.append_files = append_files
        #: When the recovery store of a run with recovery was made (epoch
        #: seconds): what its killed executions wrote can be told apart.
        self.store_created: float | None = None
        self.outputs: dict[str, list[Any]] = {}
        #: Dead letters of a run that writes them to no sink of its own: the
        #: first `DEAD_LETTERS_KEPT`, with exact counts by step and kind.
        self.dead_letters: list[DeadLetter] = []
        self.dead_counts: dict[tuple[str, str], int] = {}
        self._shared: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def keep_dead(
        self, letters: list[DeadLetter], *, keep: bool = True, count: bool = True
    ) -> None:
        """Count ``letters`` by step and kind; keep them while fewer than the bound are kept.

        With ``keep=False`` they are only counted (a dead-letter sink has them);
        with ``count=False`` only kept (they were counted when made).
        """
        with self._lock:
            if count:
                count_dead(letters, self.dead_counts)
            room = DEAD_LETTERS_KEPT - len(self.dead_letters) if keep else 0
            if room > 0:
                self.dead_letters.extend(letters[:room])

    def collect(self, name: str) -> list[Any]:
        """Return the list that memory sink ``name`` appends to."""
        with self._lock:
            return self.outputs.setdefault(name, [])

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        """Return the run-wide object for ``key``, making it once."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]

    def close(self) -> None:
        """Close what was shared (open files)."""
        for value in self._shared.values():
            close = getattr(value, "close", None)
            if close is not None:
                close()
        self._shared.clear()


class Writer(ABC):
    """Writes lists of records for one worker."""

    @abstractmethod
    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        """Write ``items``; return the records that failed, with the error."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release."""


class Sink(ABC):
    """A destination for records."""

    @property
    @abstractmethod
    def label(self) -> str:
        """A short, stable description used to name the write step."""

    @abstractmethod
    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Open this worker's writer."""

    @property
    def function(self) -> str:
        """What to name in a dead letter when a write fails."""
        return type(self).__name__


class ExactWriter(Writer):
    """The one writer of an `ExactSink`: its position says what it has written."""

    @abstractmethod
    def position(self) -> Any:
        """Return what has been written so far (plain values: kept in the snapshots)."""


class ExactSink(Sink):
    """A sink written exactly once in runs with recovery.

    In such a run one writer, opened with `open_exact`, takes every record of
    the sink (records of other workers and processes travel to it), and its
    `ExactWriter.position` is kept in each snapshot. A resumed run opens it
    with the position of the snapshot it resumes from; the records written
    after that snapshot are handed to it again, so the writer first undoes
    what was written after the position (cuts a file back, deletes entries).
    Without recovery, `open` gives each worker a writer as for any sink.
    """

    @property
    def partition(self) -> str:
        """The name of the one writer in the recovery store (stable from run to run)."""
        return self.label

    @abstractmethod
    def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
        """Open the one writer of step ``step``: anew (``resume`` None), or at position ``resume``.

        The pipeline's name (``ctx.pipeline``) and ``step`` are the same from run
        to run: together they name this writer's records in a shared target.
        """


class _ListWriter(Writer):
    def __init__(self, target: list[Any]) -> None:
        self.target = target

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        self.target.extend(items)
        return []


class MemorySink(Sink):
    """Keep records in memory; they appear in ``RunResult.outputs[name]``."""

    def __init__(self, name: str) -> None:
        """Collect under ``name``."""
        if not isinstance(name, str) or not name.isidentifier():
            msg = (
                f"memory sink name must be an identifier; got {name!r}. "
                f"Hint: sinks.memory('alerts')."
            )
            raise ValueError(msg)
        self.name = name

    @property
    def label(self) -> str:
        """Name the write step after the output."""
        return f"memory_{self.name}"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Append to the run's list for this name."""
        return _ListWriter(ctx.collect(self.name))


def to_json(item: Any) -> str:
    r"""Serialise a record as one JSON line (events via pydantic).

    A string no UTF-8 can hold (a lone surrogate, from bytes decoded with
    ``surrogateescape``) is written as a JSON escape, so the record is kept:

    >>> to_json({"k": "\udcff"})
    '{"k": "\\udcff"}'

    A float that is not finite is written as null, as pydantic writes it, so
    that every line is JSON (``NaN`` is not):

    >>> to_json({"mean": float("nan"), "all": [1.5, float("inf")], float("inf"): 0})
    '{"mean": null, "all": [1.5, null], "Infinity": 0}'

    An event, a pydantic model, a dataclass or an Enum inside a dict or list
    is written as pydantic writes it (its fields; the Enum's value), and a
    value JSON has no other form for as its ``str()``, in an event's field
    as in a dict:

    >>> from typing import Any
    >>> from operators import Event
    >>> class Tagged(Event):
    ...     tag: Any
    >>> class Opaque:
    ...     def __str__(self) -> str:
    ...         return "opaque"
    >>> line = to_json(Tagged(id="t1", time="2026-01-01T00:00:00Z", tag=Opaque()))
    >>> line.endswith('"tag": "opaque"}'), to_json({"tag": Opaque()})
    (True, '{"tag": "opaque"}')
    >>> to_json({"first": Tagged(id="t1", time="2026-01-01T00:00:00Z", tag=1)})
    '{"first": {"type": "tagged", "id": "t1", "time": "2026-01-01T00:00:00Z", "tag": 1}}'

    A value with no data to write (a generator, an iterator, a function, an
    object whose only text is Python's default, naming where it is in
    memory) is refused, so its record becomes a dead letter:

    >>> to_json({"items": (n for n in [1, 2])})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: a generator is not data JSON can hold: a step handed on the generator, ...
    """
    if isinstance(item, BaseModel):
        try:
            return item.model_dump_json()
        except PydanticSerializationError:
            return _dumps(to_jsonable_python(item, fallback=json_text))
    return _dumps(item)


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, default=jsonable, allow_nan=False)
    except ValueError as exc:
        if str(exc).startswith("Circular reference"):
            raise  # a record that holds itself: no JSON can
        # A nan or an infinity somewhere in it.
        return json.dumps(finite(value), default=jsonable, allow_nan=False)


def write_all(handle: Any, data: bytes) -> int:
    """Write all of ``data`` to an unbuffered file (a write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[handle.write(view) :]
    return len(data)


def to_lines(items: list[Any]) -> tuple[str, list[tuple[Any, Exception]]]:
    r"""Serialise records as JSON Lines, one per line; return them and the records that failed.

    A record that cannot be written (a reference cycle in it, a ``__str__``
    that raises) is left out and returned with its error, to become a dead
    letter of the write step; the others are written.

    >>> cycle: list[Any] = []
    >>> cycle.append(cycle)
    >>> text, failed = to_lines([{"n": 1}, cycle, {"n": 2}])
    >>> text, [(item is cycle, type(exc).__name__) for item, exc in failed]
    ('{"n": 1}\n{"n": 2}\n', [(True, 'ValueError')])
    """
    try:
        return "".join(to_json(item) + "\n" for item in items), []
    except Exception:  # noqa: BLE001 - record by record, to say which
        lines: list[str] = []
        failed: list[tuple[Any, Exception]] = []
        for item in items:
            try:
                lines.append(to_json(item) + "\n")
            except Exception as exc:  # noqa: BLE001 - the record's dead letter says it
                failed.append((item, exc))
        return "".join(lines), failed


def packer(path: str) -> Callable[[bytes], bytes] | None:
    r"""Return what compresses a batch written to ``path``, as its suffix says, or None.

    ``.gz``, ``.bz2`` and ``.xz``: each batch is a whole compressed stream of
    its own, and a file of such streams one after another is what gzip,
    bzip2 and xz (and evflow's file sources) read as the whole: a file cut
    back to a batch's end, as a resume does, is still whole.

    >>> import gzip
    >>> pack = packer("out.jsonl.gz")
    >>> gzip.decompress(pack(b"a\n") + pack(b"b\n")), packer("out.jsonl") is None
    (b'a\nb\n', True)
    """
    kind = SUFFIXES.get(os.path.splitext(path)[1])
    if kind is None:
        return None
    if kind == "gzip":  # the same bytes on every run: no time in the header
        return partial(gzip.compress, compresslevel=6, mtime=0)
    pack: Callable[[bytes], bytes] = CODECS[kind].compress
    return pack


class _SharedFile:
    """One open file for all of a run's workers, written under a lock."""

    def __init__(self, path: str, append: bool = False) -> None:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # Unbuffered: each batch goes to the operating system in one write()
        # call, so what a run wrote before a crash (and before its last
        # snapshot) is in the file even if the process is killed. Processes of
        # one run append to the file their parent truncated.
        mode = "ab" if append else "wb"
        self.handle: Any = open(path, mode, buffering=0)  # noqa: SIM115 - closed by close()
        self.lock = threading.Lock()
        self.pack = packer(path)

    def write(self, text: str) -> None:
        data = text.encode()
        if self.pack is not None and data:
            data = self.pack(data)
        with self.lock:
            write_all(self.handle, data)

    def flush(self) -> None:
        with self.lock:
            self.handle.flush()

    def close(self) -> None:
        with self.lock:
            self.handle.close()


class _FileWriter(Writer):
    def __init__(self, shared: _SharedFile) -> None:
        self.shared = shared

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        text, failed = to_lines(items)
        self.shared.write(text)
        return failed

    def close(self) -> None:
        self.shared.flush()


class JsonlSink(ExactSink):
    """Write records as JSON Lines to one file, truncated when the run starts.

    With recovery the file is written exactly once: one writer, whose
    snapshot is the file's length; on resume the file is cut back to it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path``."""
        self.path = file_path(path, "jsonl sink", "sinks.jsonl('out.jsonl')")

    @property
    def label(self) -> str:
        """Name the write step after the file (less a compressed file's suffixes)."""
        stem = os.path.splitext(os.path.basename(self.path))[0]
        if os.path.splitext(self.path)[1] in SUFFIXES:
            stem = os.path.splitext(stem)[0]
        return f"jsonl_{slug(stem)}"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Share one handle between the run's workers."""
        path = os.path.abspath(self.path)
        return _FileWriter(ctx.shared(("jsonl", path), lambda: _SharedFile(path, ctx.append_files)))

    @property
    def partition(self) -> str:
        """The file's absolute path."""
        return os.path.abspath(self.path)

    def open_exact(self, ctx: RunContext, step: str, resume: Any | None) -> ExactWriter:
        """Open the file anew, or cut back to the snapshot's length."""
        return _ExactFile(self.partition, resume)


class _StdoutWriter(Writer):
    def __init__(self, show: Callable[[Any], None]) -> None:
        self.show = show

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        failed: list[tuple[Any, Exception]] = []
        for item in items:
            try:
                self.show(item)
            except BrokenPipeError:
                raise  # the reader of stdout is gone (`evflow run ... | head`): the run stops
            except Exception as exc:  # noqa: BLE001 - a record that cannot be shown: its dead letter
                failed.append((item, exc))
        return failed


def stdout_console(**options: Any) -> Any:
    """Return a rich ``Console`` whose broken pipe (its reader gone) raises `BrokenPipeError`.

    rich's own ends the process (``SystemExit(1)``), even from an engine
    thread: evflow stops the run instead, and its command says why.
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "stdout was closed by its reader")

    return _Console(**options)


class StdoutSink(Sink):
    """Print records: with rich on a terminal, one line each (text, or JSON) otherwise."""

    def __init__(self, prefix: str = "") -> None:
        """Print each record, after ``prefix``."""
        self.prefix = prefix

    @property
    def label(self) -> str:
        """Name the write step."""
        return "stdout"

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Print through one shared console."""
        console: Any = ctx.shared("console", stdout_console)
        lock: threading.Lock = ctx.shared("console_lock", threading.Lock)

        parts = (self.prefix,) if self.prefix else ()

        # Shown as it is: a record's brackets and colons are no markup or emoji codes.
        def show(item: Any) -> None:
            with lock:
                console.print(*parts, item, markup=False, emoji=False)

        # Read by a program: one line a record (text as it is, the rest as JSON).
        def line(item: Any) -> None:
            text = item if isinstance(item, str) else to_json(item)
            with lock:
                console.print(
                    *parts, text, markup=False, emoji=False, highlight=False, soft_wrap=True
                )

        # Asked once: whether stdout is a terminal does not change while the run goes on.
        return _StdoutWriter(show if console.is_terminal else line)


class _CallbackWriter(Writer):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        failed = []
        fn = self.fn
        for item in items:
            try:
                fn(item)
            except Exception as exc:  # noqa: BLE001 - becomes a dead letter
                failed.append((item, exc))
        return failed


class CallbackSink(Sink):
    """Call a function with each record; a failing call is dead-lettered."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(record)`` for every record."""
        if not callable(fn):
            msg = f"callback sink needs a callable; got {type(fn).__name__} {fn!r}."
            raise TypeError(msg)
        check_arity(fn, 1, "callback sink", "fn", "the record", "sinks.callback(print).")
        self.fn = fn

    @property
    def label(self) -> str:
        """Name the write step after the function."""
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return "callback" if name == "<lambda>" else f"callback_{name}"

    @property
    def function(self) -> str:
        """Name the user's function."""
        return describe_function(self.fn)

    def open(self, ctx: RunContext, worker_index: int, worker_count: int) -> Writer:
        """Call the function from this worker."""
        return _CallbackWriter(self.fn)


_IN, _OUT, _DEAD = (COUNTER_FIELDS.index(f) for f in ("in", "out", "dead"))


def keep_refused_letters(
    ctx: RunContext, row: list[int], failed: list[tuple[Any, Exception]]
) -> None:
    """Keep the dead letters a dead-letter sink refused with the run's result, saying why.

    Nothing else holds them: they are counted as ``dead`` at the dead-letter
    step (not again in the run's total), and the summary warns of them.
    """
    row[_DEAD] += len(failed)
    ctx.keep_dead(
        [
            letter.model_copy(
                update={
                    "message": f"{letter.message} [not written to the dead-letter sink: "
                    f"{type(exc).__name__}: {exc}]"
                }
            )
            for letter, exc in failed
        ],
        count=False,
    )


def unreached(step: str) -> RuntimeError:
    """Say why the dead letter of a record write step ``step`` refused misses the dead-letter sink.

    In a run with recovery, an exactly-once sink's one writer, and the sinks
    of a run whose dead-letter sink is an exactly-once file, are outputs of
    their own: what they refuse cannot be handed on to another output.
    """
    return RuntimeError(
        f"in a run with recovery, the dead letters of records {step!r} refused cannot reach "
        f"the dead-letter sink"
    )


def refused(pipeline: str, step: str, sink: Sink, item: Any, exc: Exception) -> DeadLetter:
    """Make the dead letter of a record that ``sink`` (write step ``step``) could not take."""
    return DeadLetter.build(
        pipeline=pipeline,
        step=step,
        kind="user_error",
        error_type=type(exc).__qualname__,
        message=str(exc),
        function=sink.function,
        payload=payload_text(item),
        event_time=getattr(item, "time", None),
    )


class _PacketPartition(StatelessSinkPartition[Packet]):
    def __init__(self, owner: PacketSink, worker_index: int, worker_count: int) -> None:
        self.owner = owner
        ctx = owner.ctx
        self.writers = [
            (exit_index, row, sink, sink.open(ctx, worker_index, worker_count))
            for exit_index, row, sink in owner.targets
        ]
        dead = owner.dead_sink
        self.dead_writer = None if dead is None else dead[1].open(ctx, worker_index, worker_count)
        self.dead_row = None if dead is None else dead[0]

    def write_batch(self, items: list[Packet]) -> None:
        try:
            self._write(items)
        except Exception as exc:  # noqa: BLE001 - a broken sink halts the run
            self.owner.counters.halt(exc)

    def _write(self, items: list[Packet]) -> None:
        owner = self.owner
        table = owner.counters.table()
        for packet in items:
            # Another output writes the stage's own dead letters: leave them be.
            dead = [] if owner.dead_elsewhere is not None else packet.dead
            for exit_index, row_index, sink, writer in self.writers:
                records = packet.exits[exit_index]
                if not records:
                    continue
                row = table[row_index]
                row[_IN] += len(records)
                failed = writer.write(records)
                row[_OUT] += len(records) - len(failed)
                if failed:
                    row[_DEAD] += len(failed)
                    dead.extend(
                        owner.sink_failure(row_index, sink, item, exc) for item, exc in failed
                    )
            if dead and self.dead_writer is not None:
                assert self.dead_row is not None
                row = table[self.dead_row]
                row[_IN] += len(dead)
                failed = self.dead_writer.write(dead)
                row[_OUT] += len(dead) - len(failed)
                owner.ctx.keep_dead(dead, keep=False)
                if failed:
                    keep_refused_letters(owner.ctx, row, failed)
            elif dead and owner.dead_elsewhere is not None:
                # The records a sink here refused: the exactly-once dead-letter file is
                # written by another output, which their letters cannot reach.
                owner.ctx.keep_dead(dead, keep=False)
                row = table[owner.dead_elsewhere]
                row[_IN] += len(dead)
                keep_refused_letters(owner.ctx, row, [(d, unreached(d.step)) for d in dead])
            elif dead:
                owner.ctx.keep_dead(dead)

    def close(self) -> None:
        for _, _, _, writer in self.writers:
            writer.close()
        if self.dead_writer is not None:
            self.dead_writer.close()


class PacketSink(DynamicSink[Packet]):
    """One bytewax output for every sink a stage feeds, plus dead letters.

    ``targets`` lists ``(exit index, counter row, sink)``; ``dead_sink`` is
    ``(counter row, sink)`` for dead letters, or None to keep them in the
    run context. With ``dead_elsewhere`` (the dead-letter step's row), the
    stage's dead letters go to an exactly-once file by another output, and
    those of records a sink here refused are kept in the run context, counted
    at that step as not reaching it.
    """

    def __init__(
        self,
        ctx: RunContext,
        counters: Counters,
        targets: Sequence[tuple[int, int, Sink]],
        dead_sink: tuple[int, Sink] | None,
        *,
        dead_elsewhere: int | None = None,
    ) -> None:
        """Describe where each exit goes."""
        self.ctx = ctx
        self.counters = counters
        self.targets = list(targets)
        self.dead_sink = dead_sink
        self.dead_elsewhere = dead_elsewhere

    def sink_failure(self, row: int, sink: Sink, item: Any, exc: Exception) -> DeadLetter:
        """Make the dead letter for a record a sink could not take."""
        return refused(self.ctx.pipeline, self.counters.steps[row], sink, item, exc)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PacketPartition:
        """Open every writer for one worker."""
        return _PacketPartition(self, worker_index, worker_count)


class _ExactFile(ExactWriter):
    """The one writer of a jsonl file; its position is the file's length.

    With a digest of the bytes just before it, so that a resume onto another
    file of that length (or longer) is refused.
    """

    def __init__(self, path: str, resume: Any | None) -> None:
        offset, kept = resume if isinstance(resume, tuple) else (resume, None)
        if offset is not None and (type(offset) is not int or offset < 0):
            msg = f"a file length must be an int >= 0; got {offset!r}"
            raise ValueError(msg)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.tail = b""
        self.pack = packer(path)
        if offset:
            self.tail = _check_resumable(path, offset, kept)
        if offset is None or not os.path.exists(path):
            self.handle: Any = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
            self.offset = 0
        else:
            # Resumed: what was written after the snapshot is written again by
            # this run, so the file goes back to its length at that snapshot.
            self.handle = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed by close()
            self.handle.truncate(offset)
            self.handle.seek(offset)
            self.offset = offset

    def write(self, items: list[Any]) -> list[tuple[Any, Exception]]:
        text, failed = to_lines(items)
        data = text.encode()
        if self.pack is not None and data:
            data = self.pack(data)
        self.offset += write_all(self.handle, data)
        self.tail = (self.tail + data)[-TAIL:] if len(data) < TAIL else data[-TAIL:]
        return failed

    def position(self) -> tuple[int, str]:
        return (self.offset, digest(self.tail))

    def close(self) -> None:
        self.handle.close()


class _ExactPart(StatefulSinkPartition[list[Any], Any]):
    """The engine's side of an `ExactWriter`: counts, failures, snapshots."""

    def __init__(self, owner: ExactOutput, writer: ExactWriter) -> None:
        self.owner = owner
        self.writer = writer

    def write_batch(self, values: list[list[Any]]) -> None:
        owner = self.owner
        try:
            row = owner.counters.table()[owner.row]
            for records in values:
                row[_IN] += len(records)
                failed = self.writer.write(records)
                row[_OUT] += len(records) - len(failed)
                if failed and owner.letters:
                    keep_refused_letters(owner.ctx, row, failed)
                elif failed:
                    row[_DEAD] += len(failed)
                    letters = [owner.failure(item, exc) for item, exc in failed]
                    if owner.dead_row is None:
                        owner.ctx.keep_dead(letters)
                        continue
                    # This output is not the stage's: its letters cannot reach the
                    # dead-letter sink, so they are kept and told as it refused them.
                    owner.ctx.keep_dead(letters, keep=False)
                    held = owner.counters.table()[owner.dead_row]
                    held[_IN] += len(letters)
                    why = unreached(owner.counters.steps[owner.row])
                    keep_refused_letters(owner.ctx, held, [(letter, why) for letter in letters])
        except Exception as exc:  # noqa: BLE001 - a broken sink halts the run
            owner.counters.halt(exc)

    def snapshot(self) -> Any:
        return self.writer.position()

    def close(self) -> None:
        self.writer.close()


class OutputChangedError(RuntimeError):
    """An exactly-once output file is shorter than the snapshot a run resumes from."""


def _check_resumable(path: str, offset: int, kept: str | None) -> bytes:
    """Refuse to resume onto a file that lost or changed what the snapshot covers.

    Return the bytes before ``offset`` that the snapshot's digest ``kept`` covers.
    """
    try:
        size: int | None = os.stat(path).st_size
    except FileNotFoundError:
        size = None
    if size is not None and size >= offset:
        with open(path, "rb") as f:
            tail = tail_before(f.fileno(), offset)
        if kept is None or digest(tail) == kept:
            return tail
        what = "no longer holds what the run wrote before its last snapshot"
    else:
        what = "does not exist" if size is None else f"holds {size:,} bytes"
        what += (
            f", but the recovery store's last snapshot covers {offset:,} bytes written to it: "
            f"the file was deleted or cut short after that run"
        )
    msg = (
        f"jsonl sink {path!r} {what}, and resuming would lose (or pad with zeros) the "
        f"records of the earlier run. Hint: put the file back as it was, or start over: "
        f"remove the recovery store and the output files and run again."
    )
    raise OutputChangedError(msg)


class ExactOutput(FixedPartitionedSink[list[Any], Any]):
    """The engine's output for an `ExactSink` in a run with recovery.

    One partition, the sink's one writer, takes every item: ``(partition,
    records)``.
    """

    def __init__(
        self,
        sink: ExactSink,
        ctx: RunContext,
        counters: Counters,
        row: int,
        *,
        letters: bool = False,
        dead_row: int | None = None,
    ) -> None:
        """Write to ``sink``, counting under step ``row`` (``letters``: the run's dead letters).

        ``dead_row``: the dead-letter step's row when the run has a dead-letter
        sink, which the dead letters of records this sink refuses cannot reach.
        """
        self.sink = sink
        self.ctx = ctx
        self.counters = counters
        self.row = row
        self.letters = letters
        self.dead_row = dead_row

    def list_parts(self) -> list[str]:
        """One partition: the sink's writer."""
        return [self.sink.partition]

    def part_fn(self, item_key: str) -> int:
        """Every item goes to the one partition."""
        return 0

    def failure(self, item: Any, exc: Exception) -> DeadLetter:
        """Make the dead letter for a record the writer could not take."""
        return refused(self.ctx.pipeline, self.counters.steps[self.row], self.sink, item, exc)

    def build_part(self, step_id: str, for_part: str, resume_state: Any | None) -> _ExactPart:
        """Open the writer: anew, or back at the snapshot's position."""
        try:
            step = self.counters.steps[self.row]
            return _ExactPart(self, self.sink.open_exact(self.ctx, step, resume_state))
        except OutputChangedError as exc:
            self.counters.halt(exc)
        except Exception as exc:  # noqa: BLE001 - a writer that cannot resume halts the run
            if resume_state is None:
                self.counters.halt(exc)
            self.counters.halt(ResumeError.of(step_id.rsplit(".", 1)[-1], exc, for_part))
