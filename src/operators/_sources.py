"""Sources: where records come from, read in chunks, one partition at a time.

An evflow source lists its partitions and opens a reader per partition.
`ChunkSource` adapts any of them to a bytewax ``FixedPartitionedSource`` whose
items are `Chunk` values (a batch of records with their origin), so bytewax's
per-item cost is paid once per batch. A reader's state is its position, which
is what bytewax snapshots for recovery.
"""

from __future__ import annotations

import bz2
import copy
import csv
import dataclasses
import difflib
import glob
import gzip
import hashlib
import json
import lzma
import math
import os
import random
import re
import select
import sys
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from datetime import time as dt_time
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, TypeVar
from uuid import UUID

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from pydantic import BaseModel

from operators._event import Schema, event_classes, named_by_text
from operators._owned import all_fixed, owned
from operators._stage import (
    Chunk,
    Counters,
    ResumeError,
    Unreadable,
    check_arity,
    describe_function,
)

__all__ = [
    "DEFAULT_BATCH",
    "ChunkSource",
    "CsvSource",
    "GenerateSource",
    "JsonlSource",
    "MemorySource",
    "Reader",
    "Source",
    "StdinSource",
]

#: Records per chunk unless a source is told otherwise.
DEFAULT_BATCH = 1000

#: Chunks a partition hands over at once, when that many are ready.
READ_AHEAD = 8

#: Seconds a partition has had nothing to read before it says it is idle.
QUIET = 0.1


class Reader(ABC):
    """Reads one partition: chunks of records, and the position to resume at."""

    #: Whether several chunks may be read in a row: False for a reader that
    #: waits for its input (the records read so far go on at once).
    read_ahead: bool = True

    @abstractmethod
    def next_chunk(self) -> Chunk | None:
        """Return the next chunk, or None when nothing is ready now.

        The partition ends when this raises ``StopIteration`` or returns a
        chunk with ``eof=True`` (its records, if any, are read first); the
        reader is not asked again after either.
        """

    @abstractmethod
    def position(self) -> Any:
        """Return the position to resume from (picklable)."""

    def next_awake(self) -> datetime | None:
        """Return when to ask again after an empty read (None: at once)."""
        return None

    #: Whether the run keeps snapshots (set before the first read): a reader
    #: that acknowledges its input upstream then waits for `committed`.
    recovering: bool = False

    def committed(self, position: Any) -> None:  # noqa: B027 - optional hook
        """Hear that a resumed run would start at ``position`` (runs with recovery).

        Called from time to time with the position of the newest snapshot
        that the recovery store holds durably, and with the last position
        once the run has ended well: what it covers never needs reading
        again, so a reader may acknowledge it upstream (a consumer group's
        ``XACK``, a broker's commit).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the reader holds."""


#: The type of the records a source gives (after its schema, if any).
R = TypeVar("R", covariant=True)


class Source(ABC, Generic[R]):
    """A partitioned, replayable source of records of type ``R``."""

    #: The event schema that raw records are parsed with, if any.
    schema: Schema | None = None
    #: Records per chunk.
    batch_size: int = DEFAULT_BATCH
    #: Whether a resumed run can read again from a snapshot's position. A run
    #: with recovery refuses a source that cannot (standard input).
    replayable: bool = True

    @property
    @abstractmethod
    def label(self) -> str:
        """A short, stable description used to name the read step."""

    @abstractmethod
    def partitions(self) -> list[str]:
        """Return the partition names (stable across runs)."""

    @abstractmethod
    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Open a reader on ``partition``, resuming at ``resume`` if given."""

    def held_now(self) -> Source[R]:
        """Return a source of what this one holds now: itself, unless it waits for more.

        A sample (`testing.head`, a preview) reads it, and ends.
        """
        return self


class _Partition(StatefulSourcePartition[Chunk, Any]):
    """One partition's reader; a failure halts the run instead of the engine."""

    def __init__(
        self,
        reader: Reader | None,
        counters: Counters | None,
        step: str,
        part: str,
        owner: ChunkSource | None = None,
        step_id: str = "",
    ) -> None:
        self.reader = reader
        self.counters = counters
        self.step = step
        self.part = part
        self.owner = owner
        self.step_id = step_id
        #: Whether to tell the reader what the store holds (it listens, the run recovers).
        self.listens = (
            reader is not None
            and owner is not None
            and owner.durable is not None
            and type(reader).committed is not Reader.committed
        )
        self.ended = False
        #: Since when the reader has had nothing to read (None: it has).
        self.quiet_since: float | None = None
        self.said_idle = False

    def next_batch(self) -> list[Chunk]:
        if self.counters is not None:
            self.counters.check_halted()
        if self.reader is None or self.ended:
            raise StopIteration
        # Up to READ_AHEAD chunks that are ready now, for keyed steps: they
        # take them in one call, one item per key bucket for all of them (its
        # per-item costs, and pickling, paid once). Stateless stages read one
        # chunk at a time: fewer records alive at once run faster.
        chunks: list[Chunk] = []
        most = 1
        if self.reader.read_ahead and (self.owner is None or self.owner.read_ahead):
            most = READ_AHEAD
        while len(chunks) < most:
            try:
                chunk = self.reader.next_chunk()
            except StopIteration:
                # Say so downstream first: event-time windows stop waiting for
                # this partition's watermark.
                self.ended = True
                chunks.append(Chunk([], self.step, self.part, eof=True))
                break
            except Exception as exc:
                if self.counters is None:
                    raise
                self.counters.halt(exc)
            if chunk is None:
                break
            chunks.append(chunk)
            if chunk.eof:
                # The reader says its partition has ended: it is not asked again.
                self.ended = True
                break
        if chunks:
            self.quiet_since = None
            self.said_idle = False
            return chunks
        # Nothing to read: once that has lasted a moment, say so downstream
        # (once), so that event-time windows can stop waiting for this
        # partition after their idle_timeout. A step that is busy says nothing.
        now = time.time()
        if self.quiet_since is None:
            self.quiet_since = now
        elif not self.said_idle and now - self.quiet_since >= QUIET:
            self.said_idle = True
            chunks.append(Chunk([], self.step, self.part, idle_since=self.quiet_since))
        return chunks

    def next_awake(self) -> datetime | None:
        return None if self.reader is None else self.reader.next_awake()

    def snapshot(self) -> Any:
        if self.reader is None:
            return None
        position = self.reader.position()
        if self.listens:
            assert self.owner is not None and self.owner.durable is not None
            found, held = self.owner.durable(self.step_id, self.part)
            try:
                if found:
                    self.reader.committed(held)
            except Exception as exc:
                if self.counters is None:
                    raise
                self.counters.halt(exc)
        return position

    def close(self) -> None:
        if self.reader is None:
            return
        if self.listens:
            # Told of its last position once the run has ended well (or closed then).
            assert self.owner is not None
            self.owner.lingering.append(self.reader)
            return
        self.reader.close()


class ChunkSource(FixedPartitionedSource[Chunk, Any]):
    """A bytewax source over an evflow `Source`, yielding chunks."""

    def __init__(
        self,
        source: Source[Any],
        counters: Counters | None = None,
        durable: Callable[[str, str], tuple[bool, Any]] | None = None,
        *,
        read_ahead: bool = True,
    ) -> None:
        """Wrap ``source``; with ``counters``, stop reading once the run halts.

        ``durable(step_id, partition)`` (runs with recovery) finds the position
        a resumed run would start from, for readers that acknowledge upstream.
        ``read_ahead``: hand over several ready chunks at once (for keyed steps).
        """
        self.source = source
        self.counters = counters
        self.durable = durable
        self.read_ahead = read_ahead
        #: Readers that wait for the run's end to hear of their last position.
        self.lingering: list[Reader] = []

    def finish(self, ended_well: bool) -> None:
        """Tell waiting readers their last position (if the run ended well); close them."""
        failed: BaseException | None = None
        while self.lingering:
            reader = self.lingering.pop()
            try:
                if ended_well:
                    reader.committed(reader.position())
            except Exception as exc:  # noqa: BLE001 - the others are closed first
                failed = failed or exc
            finally:
                reader.close()
        if failed is not None:
            raise failed

    def list_parts(self) -> list[str]:
        """List the partitions (a failure halts the run)."""
        if self.counters is not None:
            self.counters.started()  # bytewax lists partitions once the cluster formed
        try:
            return self.source.partitions()
        except Exception as exc:
            if self.counters is None:
                raise
            self.counters.halt(exc)

    def build_part(self, step_id: str, for_part: str, resume_state: Any | None) -> _Partition:
        """Open one partition."""
        step = step_id.rsplit(".", 1)[-1]
        try:
            reader = self.source.open(for_part, step, resume_state)
        except Exception as exc:
            if self.counters is None:
                raise
            if isinstance(exc, ResumeError):
                self.counters.halt(exc)
            if resume_state is not None:
                self.counters.halt(ResumeError.of(step, exc, for_part))
            self.counters.halt(exc)
        reader.recovering = self.durable is not None
        return _Partition(reader, self.counters, step, for_part, self, step_id)


def file_path(path: Any, what: str, example: str) -> str:
    """Return ``path`` (text, bytes or a path-like object) as text; refuse anything else.

    >>> file_path(Path("a.jsonl"), "jsonl sink", "sinks.jsonl('out.jsonl')")
    'a.jsonl'
    """
    if not isinstance(path, str | bytes | os.PathLike):
        msg = (
            f"{what}: path must be a file path (a str or a pathlib.Path); got "
            f"{type(path).__name__} {path!r:.80}. Hint: {example}."
        )
        raise TypeError(msg)
    return os.fsdecode(os.fspath(path))


def slug(text: str) -> str:
    """Turn a file name into a step-name part: letters, digits, underscores.

    >>> slug("clicks-2026-*.v2")
    'clicks_2026_v2'
    """
    return re.sub(r"\W+", "_", text).strip("_") or "file"


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    size, extra = divmod(n, parts)
    bounds = []
    start = 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size must be a whole number of at least 1; got {batch_size!r}."
        raise ValueError(msg)
    return batch_size


class _ListReader(Reader):
    def __init__(
        self,
        items: list[Any],
        bounds: tuple[int, int],
        pos: int,
        step: str,
        part: str,
        batch: int,
    ) -> None:
        self.items = items
        #: The part of the list this partition reads: kept in its position.
        self.bounds = bounds
        self.pos = pos
        self.end = bounds[1]
        self.step = step
        self.part = part
        self.batch = batch

    def next_chunk(self) -> Chunk | None:
        if self.pos >= self.end:
            raise StopIteration
        stop = min(self.pos + self.batch, self.end)
        # The run's own copies of mutable records: the user's list stays as it was.
        items = self.items[self.pos : stop]
        fixed = all_fixed(items)
        chunk = Chunk(items if fixed else owned(items), self.step, self.part, self.pos, fixed=fixed)
        self.pos = stop
        return chunk

    def position(self) -> tuple[int, int, int, str | None]:
        """Where the part is read to, its bounds, and a digest of the last record read."""
        start = self.bounds[0]
        last = record_digest(self.items[self.pos - 1]) if self.pos > start else None
        return (self.pos, *self.bounds, last)


def record_digest(record: Any) -> str | None:
    """Return a digest of what ``record`` holds, the same in every run of the program.

    None for a record whose content has no such form (an object whose text
    may name where it sits in memory): nothing is checked of it. A set's
    values are taken in order, not in their hashes' order (which text's hash
    makes differ from run to run), and so are a dict's keys (a dict made from
    a set holds them in that order).

    >>> record_digest({"n": 1}) == record_digest({"n": 1}) != record_digest({"n": 2})
    True
    >>> record_digest({"b", "a"}) == record_digest({"a", "b"}), record_digest(object()) is None
    (True, True)
    >>> record_digest({"a": 1, "b": 2}) == record_digest({"b": 2, "a": 1})
    True
    """
    try:
        form = _stable_form(record)
    except (TypeError, RecursionError):
        return None
    return digest(json.dumps(form).encode("utf-8", "surrogateescape"))


#: Values whose text is the same in every run of a program (and says all they hold).
_SHOWN = (bytes, datetime, date, dt_time, timedelta, Decimal, UUID, Enum, Fraction, complex)


def _stable_form(value: Any) -> Any:
    """Return ``value`` as plain JSON values that do not depend on the run (see `record_digest`)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, _SHOWN):
        return repr(value)
    if isinstance(value, BaseModel):
        fields = {**value.__dict__, **(value.__pydantic_extra__ or {})}
        return [type(value).__qualname__, _stable_form(fields)]
    if isinstance(value, Mapping):  # in the keys' order: equal dicts are equal in any order
        pairs = [[_stable_form(k), _stable_form(v)] for k, v in value.items()]
        return sorted(pairs, key=lambda pair: json.dumps(pair[0]))
    if isinstance(value, list | tuple):
        return [_stable_form(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(json.dumps(_stable_form(v)) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return [type(value).__qualname__, _stable_form(fields)]
    raise TypeError(type(value).__name__)


def check_records(items: Any, what: str) -> None:
    """Refuse what is no collection of records: text, bytes, a path, a dict, a single value.

    Each would be read as records one by one: characters, byte values, a
    dict's keys. A set is refused too: its order is no order of its own.
    """
    if isinstance(items, str | bytes | os.PathLike | Mapping) or not isinstance(items, Iterable):
        if isinstance(items, str | os.PathLike):
            hint = f"sources.jsonl({items!r:.60}, schema=...) reads a file's records"
        elif isinstance(items, Mapping):
            hint = "a dict is one record: put it in a list, [{'user': 'ada'}]"
        else:
            hint = "sources.memory([{'user': 'ada'}, ...])"
        msg = (
            f"{what} must be a list (or another iterable) of the records themselves; got "
            f"{type(items).__name__} {items!r:.80}. Hint: {hint}."
        )
        raise TypeError(msg)
    if isinstance(items, set | frozenset):
        msg = (
            f"{what} must be in an order of their own; got a {type(items).__name__}, whose "
            f"order is its hashes': another process, or a rerun resuming from a recovery store, "
            f"would read them in another order (and a resume skip some and repeat others). "
            f"Hint: sorted(...), or a list."
        )
        raise TypeError(msg)


class MemorySource(Source[R]):
    """Records held in memory: events, dicts or JSON text (with a schema)."""

    def __init__(
        self,
        items: Iterable[Any],
        *,
        schema: Schema | None = None,
        partitions: int = 1,
        batch_size: int = DEFAULT_BATCH,
        name: str = "memory",
    ) -> None:
        """Hold ``items``, split into ``partitions`` contiguous parts."""
        check_records(items, "memory source: items")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            msg = f"partitions must be a whole number of at least 1; got {partitions!r}."
            raise ValueError(msg)
        self.items = list(items)
        self.schema = schema
        self.parts = partitions
        self.batch_size = _check_batch(batch_size)
        self.name = name

    @property
    def label(self) -> str:
        """Name the read step after the source."""
        return self.name

    def partitions(self) -> list[str]:
        """One partition name per part."""
        return [f"part{p}" for p in range(self.parts)]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Read one contiguous part of the list."""
        bounds = _split(len(self.items), self.parts)[int(partition[4:])]
        pos = bounds[0]
        if isinstance(resume, tuple):
            pos, *was = resume
            kept = was[2] if len(was) > 2 else None  # (a snapshot of an earlier evflow: none)
            was = was[:2]
            if tuple(was) != bounds:
                msg = (
                    f"step {step!r}: partition {partition!r} read items {was[0]} to {was[1]} "
                    f"of the list when the recovery store was written, and would read "
                    f"{bounds[0]} to {bounds[1]} now (the list has {len(self.items)} items in "
                    f"{self.parts} partition(s)): with another list or partitions= a resume "
                    f"would skip records or read them again; resume with the list and the "
                    f"partitions it was written with"
                )
                raise ResumeError(msg)
            if kept is not None and pos > bounds[0] and record_digest(self.items[pos - 1]) != kept:
                msg = (
                    f"step {step!r}: item {pos - 1} of the list, the last that partition "
                    f"{partition!r} read before the recovery store was written, is not what it "
                    f"was then (the list has {len(self.items)} items, as then): a resume would "
                    f"go on in the middle of other records. An event made without id= and "
                    f"time= differs on each run of the program (its id is random, its time when "
                    f"it was made): give each both, or start a new store for another list"
                )
                raise ResumeError(msg)
        elif resume is not None:  # a snapshot of an earlier evflow: the position alone
            pos = int(resume)
        return _ListReader(self.items, bounds, pos, step, partition, self.batch_size)


def digest(data: bytes) -> str:
    """Return what a position keeps of what was read before it: 16 hex digits."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


#: How many bytes before a file position its digest covers.
TAIL = 256
#: How often a followed file is looked at again once all of it is read (seconds).
FOLLOW_POLL = 0.05
#: How long a followed file whose path names a new file is still read (seconds): its
#: writer's last lines, written before it opened the new one, are not lost.
ROTATED_AFTER = 1.0


def tail_before(fd: int, offset: int) -> bytes:
    """Return the file's last bytes (`TAIL` at most) before ``offset`` (fewer if it is shorter)."""
    start = max(0, offset - TAIL)
    return os.pread(fd, offset - start, start)


def _file_changed(step: str, path: str, where: str) -> ResumeError:
    """Refuse to resume reading ``path``: what was read of it, up to ``where``, has changed."""
    msg = (
        f"step {step!r}: file {path!r} no longer holds what was read of it when the recovery "
        f"store was written (up to {where}): it was replaced or cut, and a resume would skip "
        f"its records or start inside one; resume with the file as it was, or read the new "
        f"one in a run of its own"
    )
    return ResumeError(msg)


def file_pattern(path_or_glob: str | os.PathLike[str]) -> str:
    """Return the glob pattern a file source's path stands for (see `_expand`).

    >>> file_pattern("no/such/*.jsonl"), file_pattern("no_such_file?.jsonl")
    ('no/such/*.jsonl', 'no_such_file?.jsonl')
    """
    text = os.fspath(path_or_glob)
    if os.path.exists(text) or not glob.has_magic(text):
        return glob.escape(text)
    # The longest leading folder that exists as it is written is that folder
    # (``runs[1]/*.jsonl``): the pattern is what follows it.
    folder = os.path.dirname(text)
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        folder = "" if parent == folder else parent
    return glob.escape(folder) + text[len(folder) :] if folder else text


def _expand(path_or_glob: str | os.PathLike[str]) -> list[str]:
    """Return the files a path names: itself if it exists, else those its glob matches.

    A file whose name holds ``[``, ``*`` or ``?`` (``data[2024].jsonl``) is
    read as it is, not taken for a pattern that matches nothing; so is a
    folder of such a name before a pattern (``runs[1]/*.jsonl``).
    """
    return sorted(glob.glob(file_pattern(path_or_glob)))


#: The first bytes of the compressed files a file source reads, and their kind.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
#: The module that reads and writes each kind.
CODECS: dict[str, Any] = {"gzip": gzip, "bz2": bz2, "xz": lzma}
#: The kind a file name's suffix says (what `sinks.jsonl` writes such a path in).
SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
#: The first bytes of archives it does not read, and what to do with them.
_ARCHIVES = {
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "decompress it first (zstd -d)"),
    b"PK\x03\x04": ("a zip archive", "unzip it first"),
    b"7z\xbc\xaf\x27\x1c": ("a 7z archive", "extract it first"),
}
#: What reading a compressed file that is cut short (or not what it says) raises.
_CUT = (EOFError, OSError, lzma.LZMAError, zlib.error)


def sniff(path: str) -> tuple[str | None, str | None]:
    """Return how the file at ``path`` is compressed, and why it is not read, from its first bytes.

    The kind is ``gzip``, ``bz2``, ``xz`` or None (not compressed); the
    reason names an archive or a compression evflow does not read (None: it
    is read). A pipe is not looked at: its first bytes would be lost.
    """
    head = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(6)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            return kind, None
    for magic, (what, hint) in _ARCHIVES.items():
        if head.startswith(magic):
            return None, f"file {path!r} is {what}, which evflow does not read. Hint: {hint}"
    return None, None


def open_file(path: str, kind: str | None, mode: str, **text: Any) -> Any:
    """Open ``path`` for reading, decompressing it as ``kind`` says (see `sniff`)."""
    if kind is None:
        return open(path, mode, **text)
    return CODECS[kind].open(path, mode, **text)


def cut_short(path: str, kind: str, exc: BaseException) -> Unreadable:
    """Stand for the rest of a compressed file that cannot be read (cut short, or corrupt)."""
    return Unreadable(
        "",
        ValueError(
            f"file {path!r} ({kind}) cannot be read on: {exc}. It was cut short, is still "
            f"being written, or is corrupt; the records after this point are not read"
        ),
    )


class _LinesReader(Reader):
    """Reads a text file line by line, keeping line numbers.

    Its position is ``(lines read, byte offset, digest of the bytes before it,
    where the last line began if no line end closed it)``. A file that grew
    since is read on from there: a last line its writer had not ended then is
    read again whole if it went on (what was read of it was cut), and its line
    end passed over if that is what came.
    """

    def __init__(
        self,
        path: str,
        step: str,
        batch: int,
        resume: Any | None,
        follow: bool = False,
        sniffed: tuple[str | None, str | None] | None = None,
    ) -> None:
        self.path = path
        self.step = step
        self.batch = batch
        #: How the file is compressed (None: not): its offsets are then in what it holds;
        #: and why the file is not read (an archive), or None (``sniffed``: told).
        self.kind, self.refused = sniff(path) if sniffed is None else sniffed
        #: Whether to wait at the end for lines still to be written (a compressed file
        #: is read whole), and when to look again.
        self.follow = follow and self.kind is None and self.refused is None
        self.read_ahead = not self.follow
        self.wake: datetime | None = None
        self.file = open_file(path, self.kind, "rb")
        #: The last bytes read of a compressed file (`TAIL` at most), for `position`.
        self.tail = b""
        #: Whether the file ended in what cannot be read (a compressed file cut short).
        self.broken = False
        self.line = 0
        #: The lines read of the files the path named before (a followed log rotated), and
        #: since when (monotonic seconds) the path has named a file other than the one read.
        self.base = 0
        self.moved_at: float | None = None
        #: Where the last line read began, when no line end closed it (the end of the file).
        self.open_line: int | None = None
        #: A followed file rotated away while the run was stopped, and gone from its folder:
        #: the letter that says so, to hand on first, and the position to keep till then.
        self.lost: Unreadable | None = None
        self.held: Any = None
        if resume is not None:
            self.line, offset, *seen = resume
            if len(seen) > 3:
                self.base = int(seen[3])
            # A followed file: which one it was, to find it if the path names another now.
            which = (int(seen[4]), int(seen[5])) if self.follow and len(seen) > 5 else None
            if which is not None and not self._find(*which):
                self._gone(resume, "is no longer in its folder (deleted, compressed or moved)")
            elif len(seen) > 2 and seen[2]:
                self.broken = True  # its dead letter was handed on: nothing is left to read
            elif seen and seen[0] != self._resumed_at(offset):
                if which is not None:  # made anew where the one read was (its inode)
                    self._gone(resume, "no longer holds what was read of it (made anew)")
                else:
                    self.file.close()
                    raise _file_changed(step, path, f"line {self.line}, byte {offset}")
            else:
                self.file.seek(offset)
            if len(seen) > 1 and seen[1] is not None and self.lost is None:
                self.open_line = int(seen[1])
        elif self.refused is None:
            self._from_start()

    def _read_compressed(self, lines: list[Any]) -> bytes:
        """Read a batch of a compressed file's lines into ``lines``; return the last as read.

        Keeps the last bytes read (`position` digests them: its offsets are in
        what the file holds); what cannot be read on ends the file in a letter.
        """
        assert self.kind is not None
        readline = self.file.readline
        taken: list[bytes] = []
        raw = b""
        try:
            for _ in range(self.batch):
                line = readline()
                if not line:
                    break
                raw = line
                taken.append(line)
                lines.append(line.rstrip(b"\r\n"))
        except _CUT as exc:
            self.broken = True
            lines.append(cut_short(self.path, self.kind, exc))
            raw = b"\n"
        if taken:
            self.tail = (self.tail + b"".join(taken[-TAIL:]))[-TAIL:]
        return raw

    def _from_start(self) -> None:
        """Stand at the start of the file, past a byte-order mark if it has one."""
        self.file.seek(0)
        if self._head(3) != b"\xef\xbb\xbf":
            self.file.seek(0)

    def _held(self) -> tuple[int, int]:
        """Which file the reader has open: its device and inode."""
        held = os.fstat(self.file.fileno())
        return held.st_dev, held.st_ino

    def _head(self, n: int) -> bytes:
        """Read the file's first ``n`` bytes (none of a compressed file cut before them)."""
        try:
            found: bytes = self.file.read(n)
        except _CUT:
            found = b""
        return found

    def _resumed_at(self, offset: int) -> str:
        """Return the digest of the bytes before ``offset``, as `position` kept it."""
        if self.kind is None:
            return self._before(offset)
        start = max(0, offset - TAIL)
        try:
            self.file.seek(start)  # a compressed file: read again up to there
            held = self.file.read(offset - start)
        except _CUT:
            return ""
        self.tail = held
        return digest(held) if len(held) == min(offset, TAIL) else ""

    def _reopen(self, began: int) -> bool:
        """Go on after a last line that was read without its line end, which began at ``began``.

        The reader stands where it ended. Return False while nothing tells yet
        whether it went on (nothing came, or a lone carriage return).
        """
        offset = self.file.tell()
        came = self.file.read(2)
        if came in (b"", b"\r"):
            self.file.seek(offset)
            return False
        self.open_line = None
        if came[:1] == b"\n" or came == b"\r\n":
            self.file.seek(offset + (2 if came == b"\r\n" else 1))  # it was whole: pass its end
        else:
            self.file.seek(began)  # it went on: read it again, whole, as the same line
            self.line -= 1
        return True

    def next_chunk(self) -> Chunk | None:
        if self.lost is not None:
            letter, self.lost, self.held = self.lost, None, None
            chunk = Chunk(
                [letter], self.step, self.path, self.line, file=self.path, unreadable=True
            )
            self.line += 1
            self.base = self.line
            return chunk
        if self.broken:
            raise StopIteration
        if self.refused is not None:
            self.broken = True
            letter = Unreadable("", ValueError(self.refused))
            return Chunk([letter], self.step, self.path, 0, file=self.path, unreadable=True)
        if self.open_line is not None and not self._reopen(self.open_line):
            if not self.follow:
                raise StopIteration  # the end, as far as is written yet
            self._wait()  # (a position kept by a run that did not follow the file)
            return None
        lines: list[Any] = []
        raw = b""
        if self.kind is None:
            readline = self.file.readline
            for _ in range(self.batch):
                line = readline()
                if not line:
                    break
                raw = line
                lines.append(line.rstrip(b"\r\n"))
        else:
            raw = self._read_compressed(lines)
        if self.follow and lines and raw[-1:] != b"\n" and not self._rotated():
            # Its writer has not ended the last line yet: it is read once it is whole
            # (or once the path names a new file: then no one ends it).
            self.file.seek(self.file.tell() - len(raw))
            lines.pop()
            raw = b"\n"  # the lines left are whole
        if not lines:
            if not self.follow:
                raise StopIteration
            self._not_cut()
            if self._rotated():
                self._next_file()
                return None
            self._wait()
            return None
        self.wake = None
        if raw[-1:] != b"\n" and not self.follow:  # the file's last line, with no line end (yet)
            self.open_line = self.file.tell() - len(raw)
        chunk = Chunk(
            lines,
            self.step,
            self.path,
            self.line,
            file=self.path,
            line=self.line - self.base + 1,
            unreadable=self.broken,
        )
        self.line += len(lines)
        return chunk

    def _gone(self, resume: Any, why: str) -> None:
        """Read the file at a followed path from its start: the one read while stopped ``why``.

        A `missing` letter, handed on first, says that what was written to the
        old one after the position was not read; till then the position stays.
        """
        self.lost = Unreadable(
            "",
            ValueError(
                f"file {self.path!r} was rotated while the run was stopped, and the file it "
                f"was reading (read up to its line {self.line - self.base}) {why}: the lines "
                f"written to it after that were not read; the new file at {self.path!r} is "
                f"read from its start"
            ),
            kind="missing",
        )
        self.held = resume
        self._from_start()

    def _find(self, device: int, inode: int) -> bool:
        """Find the file a followed path named when the position was kept (device, inode).

        The same file still at the path, or one renamed in its folder (a log
        rotated while the run was stopped: it is read to its end, then the
        file at the path): True, and it is the one to read. False when it is
        nowhere there.
        """
        if self._held() == (device, inode):
            return True
        folder = os.path.dirname(self.path) or "."
        for entry in os.scandir(folder):
            try:
                found = entry.stat()
            except OSError:
                continue
            if (found.st_dev, found.st_ino) == (device, inode) and entry.is_file():
                self.file.close()
                self.file = open(entry.path, "rb")  # noqa: SIM115 - closed by `close`
                self.moved_at = time.monotonic() - ROTATED_AFTER  # on to the path's once read
                return True
        return False

    def _rotated(self) -> bool:
        """Whether a followed path has named another file for `ROTATED_AFTER` seconds.

        A log rotated by renaming the file read and making a new one: the file
        read is read to its end (its writer may still end a line or write a
        few before it opens the new one: they are waited for that long), then
        the new one from its start. A path that names no file yet (renamed,
        none made again) is waited for; the file read may still grow meanwhile.
        """
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) == self._held():
            self.moved_at = None
            return False
        if self.moved_at is None:
            self.moved_at = time.monotonic()
        return time.monotonic() - self.moved_at >= ROTATED_AFTER

    def _next_file(self) -> None:
        """Go on to the file the followed path names now, from its start."""
        try:
            new = open_file(self.path, None, "rb")
        except FileNotFoundError:  # renamed away again meanwhile: looked at again later
            self._wait()
            return
        self.file.close()
        self.file = new
        self._from_start()
        self.base = self.line
        self.open_line = None
        self.wake = None
        self.moved_at = None

    def _wait(self) -> None:
        """Look at a followed file again in a moment: nothing more is written yet."""
        self.wake = datetime.now(timezone.utc) + timedelta(seconds=FOLLOW_POLL)

    def _not_cut(self) -> None:
        """Refuse to go on following a file cut shorter than what was read of it."""
        size = os.fstat(self.file.fileno()).st_size
        if size < self.file.tell():
            msg = (
                f"step {self.step!r}: file {self.path!r} was cut while it was followed (it holds "
                f"{size} bytes; {self.file.tell()} were read): what was written in its place "
                f"cannot be told apart from what was read. Hint: rotate such a file by renaming "
                f"it and making a new one (a followed path goes on to the new file), not by "
                f"cutting it (copytruncate)"
            )
            raise ValueError(msg)

    def next_awake(self) -> datetime | None:
        """When to look again at the end of a followed file (None: at once)."""
        return self.wake

    def position(self) -> tuple[Any, ...]:
        if self.held is not None:  # (the letter for a file gone while stopped, not handed yet)
            return tuple(self.held)
        if self.broken:  # read to where it cannot be read on, its dead letter handed on
            return (self.line, 0, "", None, True)
        offset = self.file.tell()
        if self.kind is None:
            at = (self.line, offset, self._before(offset), self.open_line, False)
            if self.follow:  # which file it is, and the lines of those the path named before
                return (*at, self.base, *self._held())
            return at
        kept = digest(self.tail) if len(self.tail) == min(offset, TAIL) else ""
        return (self.line, offset, kept, self.open_line, False)

    def _before(self, offset: int) -> str:
        """Return a digest of the file's last bytes before ``offset`` ("" if it is shorter)."""
        held = tail_before(self.file.fileno(), offset)
        return digest(held) if len(held) == min(offset, TAIL) else ""

    def close(self) -> None:
        self.file.close()


class _FileSource(Source[R]):
    """Files matching a path or a glob: one partition per file, read by ``reader``."""

    #: The format's name in step names and messages.
    kind = "file"
    #: Reads one file: ``reader(path, step, batch_size, resume)``.
    reader: Callable[[str, str, int, Any | None], Reader]

    def __init__(
        self, path: str | os.PathLike[str], *, schema: Schema, batch_size: int = DEFAULT_BATCH
    ) -> None:
        """Read the files matching ``path`` (a path or a glob)."""
        self.path = file_path(
            path, f"{self.kind} source", f"sources.{self.kind}('events.{self.kind}', schema=...)"
        )
        self.schema = schema
        self.batch_size = _check_batch(batch_size)

    @property
    def label(self) -> str:
        """Name the read step after the file pattern (less a compressed file's suffixes)."""
        name = Path(self.path)
        if name.suffix in SUFFIXES:
            name = name.with_suffix("")
        return f"{self.kind}_" + slug(name.stem)

    def partitions(self) -> list[str]:
        """One partition per file."""
        files = _expand(self.path)
        if not files:
            msg = f"{self.kind} source: no file matches {self.path!r}."
            raise FileNotFoundError(msg)
        for name in files:
            if os.path.isdir(name):
                msg = (
                    f"{self.kind} source: {name!r} is a directory, not a file. Hint: read the "
                    f"files in it with a glob, e.g. {os.path.join(name, '*.' + self.kind)!r}."
                )
                raise IsADirectoryError(msg)
            if not os.path.isfile(name):
                msg = (
                    f"{self.kind} source: {name!r} is no regular file (a pipe or a device): a "
                    f"file source reads a file it can read again on a resume. Hint: "
                    f"sources.stdin(schema=...) reads lines piped to the program."
                )
                raise ValueError(msg)
        return files

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Open one file."""
        return type(self).reader(partition, step, self.batch_size, resume)


def json_document(path: str, kind: str | None) -> list[Any] | None:
    """Return the records of a file of JSON written over several lines, or None.

    Such a file is no JSON Lines, and each of its lines would be a dead
    letter: one JSON array (``[`` alone on its first line, as
    ``json.dump(records, f, indent=2)`` writes it), or records one after
    another, each over several lines (``{`` alone on the first line, as
    ``jq '.[]'`` writes them). A first line that is more is JSON Lines (None).
    No line of JSON Lines is ``[`` or ``{`` alone, so a document that breaks
    off (cut short, bytes that are not UTF-8, text after its end) is read up
    to there, and the rest is one `Unreadable` saying where and why, the
    last of the records. ``kind``: how it is compressed (see `sniff`).
    """
    parts: list[bytes] = []
    cut: BaseException | None = None
    try:
        with open_file(path, kind, "rb") as f:
            first = f.readline(64)
            opening = first.strip(b"\xef\xbb\xbf \t\r\n")
            if opening not in (b"[", b"{"):
                return None
            parts.append(first)
            # A compressed file is read a piece as it comes (read1), so that what came
            # before a cut is kept.
            read = f.read if kind is None else f.read1
            while True:
                try:
                    part = read(1 << 16)
                except _CUT as exc:  # a compressed file cut short: what came before is read
                    cut = exc
                    break
                if not part:
                    break
                parts.append(part)
    except _CUT:
        return None  # not even its first line: read as lines, which say why
    raw = b"".join(parts).removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # each record that holds such bytes is a dead letter
        text = raw.decode("utf-8", "surrogateescape")
    return _records_of(path, text, opening == b"[", cut, raw)


def _records_of(
    path: str, text: str, array: bool, cut: BaseException | None, raw: bytes
) -> list[Any]:
    r"""Return the records of a JSON document: an array's items, or objects one after another.

    Where the document breaks off, the rest (from ``raw``, the file's bytes)
    is one `Unreadable` that says where (line and column) and why: ``cut``
    when the text ends there because the file could not be read on.

    >>> _records_of("f", '[\n{"a": 1},\n{"a": 2}\n]\n', True, None, b"")
    [{'a': 1}, {'a': 2}]
    >>> *ok, rest = _records_of("f", '{\n"a": 1}\n{"a": 2}\n{"a"\n', False, None, b"")
    >>> ok, str(rest.error).split(". ")[0]  # doctest: +NORMALIZE_WHITESPACE
    ([{'a': 1}, {'a': 2}], "file 'f' is a JSON document that breaks off at line 4,
    column 1: expecting ':' delimiter at line 5, column 1")
    """
    decode = json.JSONDecoder().raw_decode
    records: list[Any] = []
    end = len(text)
    mixed = _NOT_UTF8.search(text) is not None  # bytes decoded with surrogateescape
    at = _past_blanks(text, 0)
    if array:
        at = _past_blanks(text, at + 1)  # past the "["
        if at < end and text[at] == "]":
            return _after_array(path, text, _past_blanks(text, at + 1), records, cut, raw)
    while True:
        if at == end:
            if array or cut is not None:
                records.append(_broken(path, text, at, "the array does not end", cut, raw))
            return records
        began = at
        try:
            record, at = decode(text, at)
        except json.JSONDecodeError as exc:
            records.append(_broken(path, text, at, exc.msg, cut, raw, exc.pos))
            return records
        bad = _NOT_UTF8.search(text, began, at) if mixed else None
        if bad is not None:
            records.append(_not_utf8(path, text, began, at, bad.start()))
        else:
            records.append(record)
        at = _past_blanks(text, at)
        if not array or at == end:
            continue
        if text[at] == "]":
            return _after_array(path, text, _past_blanks(text, at + 1), records, cut, raw)
        if text[at] != ",":
            records.append(_broken(path, text, at, "expected ',' or ']'", cut, raw))
            return records
        at = _past_blanks(text, at + 1)


def _after_array(
    path: str, text: str, at: int, records: list[Any], cut: BaseException | None, raw: bytes
) -> list[Any]:
    """Return an array's ``records``, and a letter for what follows its end (``at``), if any."""
    if at < len(text) or cut is not None:
        records.append(_broken(path, text, at, "text after the array's end", cut, raw))
    return records


#: A byte that is not UTF-8, decoded with ``surrogateescape``.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def _not_utf8(path: str, text: str, began: int, at: int, bad: int) -> Unreadable:
    """Stand for a record of a JSON document (``text[began:at]``) holding bytes no UTF-8 holds.

    ``bad``: where the first of them is.
    """
    spot = _line_column(text, bad)
    return Unreadable(
        text[began:at].encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        ValueError(
            f"file {path!r}: a record of its JSON document holds bytes that are not "
            f"UTF-8, at {spot}"
        ),
    )


def _past_blanks(text: str, at: int) -> int:
    """Return the index of the first character at or after ``at`` that is no blank."""
    end = len(text)
    while at < end and text[at] in " \t\r\n":
        at += 1
    return at


def _broken(
    path: str,
    text: str,
    at: int,
    why: str,
    cut: BaseException | None,
    raw: bytes,
    where: int | None = None,
) -> Unreadable:
    """Stand for the rest of a JSON document, from ``at``, which cannot be read as records.

    ``where``: where the JSON in it goes wrong (``at`` by default).
    """
    where = at if where is None else where
    if cut is not None:  # the text ends where the file could not be read on
        where = len(text)
        why = f"the file cannot be read on ({cut})"
    else:
        why = why.removesuffix(" starting at").lower()
    # (Bytes that are not UTF-8 are in ``text`` as surrogates: back to the bytes they were.)
    rest = raw[len(text[:at].encode("utf-8", "surrogateescape")) :]
    return Unreadable(
        rest.decode("utf-8", "replace"),
        ValueError(
            f"file {path!r} is a JSON document that breaks off at {_line_column(text, at)}: "
            f"{why}{'' if where == at else ' at ' + _line_column(text, where)}. The records "
            f"before it are read; the rest "
            f"is this one dead letter (the file was cut short, is still being written, or is "
            f"no JSON there)"
        ),
    )


def _line_column(text: str, at: int) -> str:
    """Say where ``at`` is in ``text``: ``line 3, column 5``."""
    return f"line {text.count(chr(10), 0, at) + 1}, column {at - text.rfind(chr(10), 0, at)}"


class _ArrayReader(Reader):
    """Reads the records of a file of JSON over several lines (see `json_document`).

    Each is handed on as its JSON text, as a line of JSON Lines is; the
    position is how many were read and a digest of the last.
    """

    def __init__(
        self, path: str, step: str, batch: int, resume: Any | None, records: list[Any]
    ) -> None:
        self.path = path
        self.step = step
        self.batch = batch
        self.records = records
        self.done = 0
        if resume is not None:
            done, kept = resume
            if done > len(records) or (done and _array_digest(records[done - 1]) != kept):
                raise _file_changed(step, path, f"its JSON record {done}")
            self.done = done

    def next_chunk(self) -> Chunk | None:
        first = self.done
        taken = self.records[first : first + self.batch]
        if not taken:
            raise StopIteration
        self.done += len(taken)
        items = [r if r.__class__ is Unreadable else json.dumps(r).encode() for r in taken]
        flawed = any(r.__class__ is Unreadable for r in items)
        return Chunk(items, self.step, self.path, first, file=self.path, unreadable=flawed)

    def position(self) -> tuple[int, str | None]:
        last = _array_digest(self.records[self.done - 1]) if self.done else None
        return (self.done, last)


def _array_digest(record: Any) -> str | None:
    """Return a digest of a JSON document's record (of its text, where the document broke off)."""
    return record_digest(record.text if record.__class__ is Unreadable else record)


def _jsonl_reader(
    path: str, step: str, batch: int, resume: Any | None, follow: bool = False
) -> Reader:
    """Read a JSON Lines file, or the records of a file of JSON over several lines."""
    kind, refused = sniff(path)
    lines_position = isinstance(resume, tuple) and len(resume) > 2
    records = None if lines_position or refused else json_document(path, kind)
    if records is not None:
        return _ArrayReader(path, step, batch, resume, records)
    return _LinesReader(path, step, batch, resume, follow, (kind, refused))


class JsonlSource(_FileSource[R]):
    """JSON Lines files: one partition per file, one record per line.

    A file of JSON over several lines (see `json_document`) is read as its
    records.
    """

    kind = "jsonl"
    reader = staticmethod(_jsonl_reader)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        schema: Schema,
        batch_size: int = DEFAULT_BATCH,
        follow: bool = False,
    ) -> None:
        """Read the files matching ``path``; ``follow``: wait at their end for more lines."""
        super().__init__(path, schema=schema, batch_size=batch_size)
        if not isinstance(follow, bool):
            msg = f"jsonl source: follow must be True or False; got {follow!r}."
            raise TypeError(msg)
        self.follow = follow

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Open one file (followed, if told)."""
        return _jsonl_reader(partition, step, self.batch_size, resume, self.follow)

    def held_now(self) -> JsonlSource[R]:
        """Return this source, not following its files (what they hold now)."""
        if not self.follow:
            return self
        now = copy.copy(self)
        now.follow = False
        return now


def _row_digest(fields: list[str]) -> str:
    """Return a digest of a CSV row's fields ("" for none).

    >>> _row_digest([]), _row_digest(["a", "b"]) == _row_digest(["a", "b"]) != _row_digest(["a,b"])
    ('', True)
    """
    return digest(json.dumps(fields).encode("utf-8", "surrogateescape")) if fields else ""


def _grew_from(fields: list[str], kept: str) -> bool:
    """Whether a row whose fields had the digest ``kept`` is a beginning of ``fields``.

    >>> was = _row_digest(["c", "1"])
    >>> _grew_from(["c", "15"], was), _grew_from(["c", "2"], was), _grew_from(["c,1"], was)
    (True, False, False)
    """
    return any(
        _row_digest([*fields[:j], fields[j][:k]]) == kept
        for j in range(len(fields))
        for k in range(len(fields[j]) + 1)
    )


class _CsvReader(Reader):
    """Reads a CSV file with a header row; a row it cannot make out is `Unreadable`.

    Bytes that are not UTF-8, rows with more or fewer fields than the header, and every
    row of a file whose header names a column twice become dead letters at the
    read step (with the file and line); a byte-order mark before the header is
    skipped.
    """

    def __init__(
        self,
        path: str,
        step: str,
        batch: int,
        resume: Any | None,
        delimiter: str | None = None,
        fields: dict[str, str] | None = None,
        columns: list[str] | None = None,
    ) -> None:
        self.path = path
        self.step = step
        self.batch = batch
        self.delimiter = delimiter or ","
        #: How the file is compressed, and why it is not read (an archive), or None.
        self.kind, self.refused = sniff(path)
        # Undecodable bytes survive as surrogates, so one bad row spoils no other.
        self.file = open_file(
            path, self.kind, "rt", newline="", encoding="utf-8", errors="surrogateescape"
        )
        self.reader = csv.reader(self.file, delimiter=self.delimiter)
        #: A second handle on the file, read only for the raw lines of a refused row.
        self.raw: Any = None
        self.raw_line = 0
        #: What ended the file before its end (a compressed file cut short), once met.
        self.broken: Unreadable | None = None
        #: Whether the dead letter of a refused or broken file was handed on.
        self.told = False
        header: list[str] = [] if columns is None else list(columns)
        if self.refused is None and columns is None:  # the first row names the columns
            try:
                header = next(self.reader, [])
            except _CUT as exc:
                assert self.kind is not None
                self.broken = cut_short(path, self.kind, exc)
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        self.header = header
        #: Why no row can be read, whatever it holds: a header naming a column twice,
        #: or one column that another separator splits (with no delimiter told).
        self.spoiled: str | None = None
        if delimiter is None and len(header) == 1:
            for other in ";\t|":
                if len([name for name in header[0].split(other) if name.strip()]) > 1:
                    self.spoiled = (
                        f"the header is one column, {header[0]!r}, which {other!r} splits: the "
                        f"file seems separated by {other!r}, not by commas. Hint: "
                        f"sources.csv(..., delimiter={other!r})"
                    )
                    break
        seen: dict[str, int] = {}
        for column, name in enumerate(header, 1):
            if name in seen:
                self.spoiled = (
                    f"the header names {name!r} twice (columns {seen[name]} and {column}): "
                    f"which value is meant is unknown"
                )
                break
            seen[name] = column
        if fields is not None and header and self.spoiled is None:
            self.spoiled = _header_misses(header, fields)
        self.pending: tuple[list[str], int] | None = None
        self.done = 0
        #: The fields of the last row read: a digest of them is kept in the position.
        self.last: list[str] = []
        skip, *kept = resume if isinstance(resume, tuple) else (int(resume or 0),)
        if len(kept) > 1 and kept[1]:
            self.told = True  # the file's dead letter was handed on: not again
        for _ in range(skip):
            found = self._row()
            if found is None:
                break
            self.last = found[0]
        if kept and kept[0] != _row_digest(self.last):
            self.file.close()
            if _grew_from(self.last, kept[0]):
                msg = (
                    f"step {step!r}: row {skip} of file {path!r} was read while its writer was "
                    f"still writing it: it has grown since (it reads {','.join(self.last)!r} "
                    f"now), so the record made of it then was cut short, and so it is in the "
                    f"outputs; read a file once its writer has ended its last row"
                )
                raise ResumeError(msg)
            raise _file_changed(step, path, f"row {skip}")
        self.done = skip

    def _row(self) -> tuple[list[str], int] | None:
        """Return the next row with any field and its line, or None at the end.

        A row the csv module refuses (a field over its size limit) is its raw
        lines, marked by `_REFUSED` before them: it becomes a dead letter.
        """
        if self.pending is not None:
            row, self.pending = self.pending, None
            return row
        if self.refused is not None or self.broken is not None:
            return None
        while True:
            before = self.reader.line_num
            try:
                fields = next(self.reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                return [_REFUSED, str(exc), self._raw(before + 1, self.reader.line_num)], before + 1
            except _CUT as exc:
                assert self.kind is not None
                self.broken = cut_short(self.path, self.kind, exc)
                return None
            if fields:  # blank lines are skipped
                return fields, self.reader.line_num

    def _raw(self, first: int, last: int) -> str:
        """Return lines ``first`` to ``last`` of the file as they are (for a dead letter)."""
        if self.raw is None or self.raw_line >= first:
            if self.raw is not None:
                self.raw.close()
            self.raw = open_file(
                self.path, self.kind, "rt", newline="", encoding="utf-8", errors="surrogateescape"
            )
            self.raw_line = 0
        taken: list[str] = []
        size = 0
        for line in self.raw:
            self.raw_line += 1
            if self.raw_line >= first and size < _RAW_LIMIT:
                taken.append(line[: _RAW_LIMIT - size])
                size += len(taken[-1])
            if self.raw_line >= last:
                break
        return "".join(taken)

    def _record(self, fields: list[str]) -> Any:
        if fields and fields[0] is _REFUSED:
            return Unreadable(fields[2], ValueError(f"the csv module refused the row: {fields[1]}"))
        text = self.delimiter.join(fields)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:  # the codec's own words and position
                return Unreadable(raw.decode("utf-8", "replace"), exc)
        if self.spoiled is not None:
            return Unreadable(text, ValueError(self.spoiled))
        if len(fields) != len(self.header):  # cut short, or shifted: no field is known to be
            reason = (
                f"the row has {len(fields)} field{'s' * (len(fields) != 1)}; the header has "
                f"{len(self.header)} ({', '.join(self.header)})"
            )
            if len(fields) < len(self.header):
                missing = len(self.header) - len(fields)
                last = "the last is" if missing == 1 else f"the last {missing} are"
                reason += (
                    f". Hint: write every column, an empty one too (if {last} empty, end the "
                    f"row with {self.delimiter * missing!r})"
                )
            return Unreadable(text, ValueError(reason))
        return {k: v for k, v in zip(self.header, fields, strict=False) if v != ""}

    def next_chunk(self) -> Chunk | None:
        records: list[Any] = []
        first = 0
        while len(records) < self.batch:
            found = self._row()
            if found is None:
                break
            fields, line = found
            if not records:
                first = line
            elif line != first + len(records):
                # A blank line or a cell over several lines: the next chunk starts
                # here, so that each record's line stays first line + index.
                self.pending = found
                break
            records.append(self._record(fields))
            self.last = fields
        if not records and not self.told and (self.refused or self.broken):
            # All of the file (an archive), or what is left of it, as one dead letter.
            self.told = True
            letter = self.broken or Unreadable("", ValueError(self.refused))
            return Chunk([letter], self.step, self.path, self.done, file=self.path, unreadable=True)
        if not records:
            raise StopIteration
        chunk = Chunk(
            records,
            self.step,
            self.path,
            self.done,
            file=self.path,
            line=first,
            unreadable=any(r.__class__ is Unreadable for r in records),
        )
        self.done += len(records)
        return chunk

    def position(self) -> tuple[int, str, bool]:
        return (self.done, _row_digest(self.last), self.told)

    def close(self) -> None:
        self.file.close()
        if self.raw is not None:
            self.raw.close()


#: Marks a row the csv module refused (its error, then its raw lines follow).
_REFUSED = "\x00refused"
#: The most of a refused row's raw lines kept for its dead letter (characters).
_RAW_LIMIT = 1 << 20


def _header_misses(header: list[str], fields: dict[str, str]) -> str | None:
    """Say why a CSV header does not fit the schema's fields, or None when it may.

    ``fields`` maps each name a column may have (a field's name or alias) to
    the classes that have it. Columns that are no field are left out of the
    records, and fields that no column names take their defaults: so a column
    that is a field's name but for its spaces, case or a slip of a letter
    (``" amount"``, ``"Amount"``, ``"amout"``), or a header that names no
    field at all, would make every record of its defaults without a word.
    Columns of other names are left out as any CSV reader leaves them.

    >>> fields = {"user": "Sale", "amount": "Sale", "type": "Sale", "id": "Sale", "time": "Sale"}
    >>> _header_misses(["user", "amount", "note"], fields) is None
    True
    >>> _header_misses(["user", " amount"], fields)  # doctest: +ELLIPSIS
    "the header's column ' amount' is no field of Sale, but 'amount' is, and no column ...
    >>> _header_misses(["name", "price"], fields)  # doctest: +ELLIPSIS
    'the header (name, price) names none of the fields of Sale (amount, user): every ...
    """
    named = set(header)
    missing = [f for f in fields if f not in named]
    for column in header:
        if column in fields:
            continue
        plain = column.strip().casefold()
        near = [f for f in missing if f.casefold() == plain] or difflib.get_close_matches(
            column.strip(), missing, n=1, cutoff=0.8
        )
        if near:
            return (
                f"the header's column {column!r} is no field of {fields[near[0]]}, but "
                f"{near[0]!r} is, and no column names it: each record would leave the "
                f"column's value out and take the field's default. Hint: name the column "
                f"{near[0]!r} in the file's header"
            )
    if not named & fields.keys():
        shown = sorted({f for f in fields if f not in ("type", "id", "time")} or fields)
        classes = ", ".join(sorted(set(fields.values())))
        return (
            f"the header ({', '.join(header)}) names none of the fields of {classes} "
            f"({', '.join(shown)}): every record would hold only their defaults. Hint: read "
            f"this file with the schema it was written for, or name its columns after the "
            f"fields; a file without a header row: sources.csv(..., columns=[...])"
        )
    return None


def _column_names(schema: Schema | None) -> dict[str, str] | None:
    """Map each name a CSV column may have for ``schema`` (field names, aliases) to its classes.

    None for no schema (rows are read as dicts).
    """
    if schema is None:
        return None
    found: dict[str, list[str]] = {}
    for cls in event_classes(schema):
        for name, info in cls.model_fields.items():
            for named in (name, info.alias, info.validation_alias):
                if isinstance(named, str) and cls.__name__ not in found.get(named, []):
                    found.setdefault(named, []).append(cls.__name__)
    return {name: " or ".join(classes) for name, classes in found.items()}


class CsvSource(_FileSource[R]):
    """CSV files with a header row: one partition per file, a row per record.

    Empty cells are left out. Fields are separated by ``delimiter`` (a comma
    unless told). ``columns`` names the columns of files without a header
    row (their first row is a record).
    """

    kind = "csv"
    reader = _CsvReader

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        schema: Schema,
        batch_size: int = DEFAULT_BATCH,
        delimiter: str | None = None,
        columns: list[str] | None = None,
    ) -> None:
        """Read the files matching ``path``, fields separated by ``delimiter``."""
        super().__init__(path, schema=schema, batch_size=batch_size)
        if columns is not None:
            named = list(columns) if isinstance(columns, list | tuple) else []
            if not named or not all(isinstance(c, str) and c for c in named):
                msg = (
                    f"csv source: columns must be a list of the names of the file's columns, "
                    f"in order; got {columns!r}. Hint: columns=['user', 'amount']."
                )
                raise ValueError(msg)
            twice = sorted({c for c in named if named.count(c) > 1})
            if twice:
                msg = f"csv source: columns names {twice} more than once; got {named!r}."
                raise ValueError(msg)
            columns = named
            missing = _header_misses(columns, _column_names(schema) or {})
            if schema is not None and missing is not None:  # refused now, not row by row
                said = missing.split(". Hint")[0].replace("the header's column", "column")
                msg = f"csv source: columns={columns!r}: {said.replace('the header (', '(')}."
                raise ValueError(msg)
        self.given_columns = columns
        if delimiter is not None and (
            not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"'"
        ):
            msg = (
                f"csv source: delimiter must be one character (not a quote or a line "
                f"break); got {delimiter!r}. Hint: delimiter=';' or delimiter='\\t'."
            )
            raise ValueError(msg)
        self.delimiter = delimiter
        #: The names a column may have (see `_header_misses`), found once for every file.
        self.columns = _column_names(schema)

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Open one file."""
        return _CsvReader(
            partition,
            step,
            self.batch_size,
            resume,
            self.delimiter,
            self.columns,
            self.given_columns,
        )


Factory = Callable[[random.Random, int], Any]


class _GenerateReader(Reader):
    def __init__(self, src: GenerateSource[Any], part: int, step: str, resume: Any | None) -> None:
        self.src = src
        self.part = part
        self.step = step
        self.rng = random.Random(f"{src.seed}:{part}")
        self.made = 0
        if resume is not None:
            self.made, state, *parts = resume
            if parts and parts[0] != src.parts:
                msg = (
                    f"step {step!r}: the generator made its records in {parts[0]} "
                    f"partition(s) when the recovery store was written, and would make them "
                    f"in {src.parts} now: each partition makes its own share of the sequence, "
                    f"so a resume would make other records; resume with "
                    f"partitions={parts[0]}"
                )
                raise ResumeError(msg)
            self.rng.setstate(state)
        self.started = datetime.now(timezone.utc)
        self.resumed_at = self.made
        self.wake: datetime | None = None

    def _limit(self) -> int | None:
        src = self.src
        if src.count is None:
            return None
        size, extra = divmod(src.count, src.parts)
        return size + (1 if self.part < extra else 0)

    def next_chunk(self) -> Chunk | None:
        src = self.src
        n = src.batch_size
        limit = self._limit()
        if limit is not None:
            n = min(n, limit - self.made)
            if n <= 0:
                raise StopIteration
        if src.rate is not None:
            per_part = src.rate / src.parts
            elapsed = (datetime.now(timezone.utc) - self.started).total_seconds()
            due = int(elapsed * per_part) - (self.made - self.resumed_at)
            if due <= 0:
                # Wake when about 20 ms of records are due (at least one), not
                # for every record: a slow rate must not keep the worker busy.
                wait = max(1.0, min(float(n), per_part * 0.02)) / per_part
                self.wake = datetime.now(timezone.utc) + timedelta(seconds=wait)
                return None
            n = min(n, due)
            self.wake = None
        factory = src.factory
        rng = self.rng
        parts = src.parts
        first = self.made
        state = rng.getstate()
        flawed = False
        try:
            items = [factory(rng, (first + i) * parts + self.part) for i in range(n)]
        except Exception:  # noqa: BLE001 - made again one by one, the failures told
            rng.setstate(state)
            items = [self._made(factory, (first + i) * parts + self.part) for i in range(n)]
            flawed = True
        self.made += n
        _name_made(items, f"{self.step}/gen{self.part}/", first)
        return Chunk(items, self.step, f"gen{self.part}", first, unreadable=flawed)

    def _made(self, factory: Factory, index: int) -> Any:
        """Make record ``index``; a factory that raises makes a `user_error` dead letter."""
        try:
            return factory(self.rng, index)
        except Exception as exc:  # noqa: BLE001 - the read step dead-letters it
            return Unreadable(
                f"record {index}", exc, kind="user_error", function=describe_function(factory)
            )

    def next_awake(self) -> datetime | None:
        return self.wake

    def position(self) -> tuple[int, Any, int]:
        return (self.made, self.rng.getstate(), self.src.parts)


def _name_made(items: list[Any], head: str, first: int) -> None:
    """Give each event made without an id one from where it was made: ``head`` and its offset.

    As a record parsed without an id is named (`ParseOp`): the factory's
    events would otherwise keep random ids, other on every run (a resumed run
    makes them again), so a sink could not tell a record written again.
    """
    for i, x in enumerate(items):
        given = getattr(x, "__pydantic_fields_set__", None)
        if given is not None and "id" not in given and named_by_text(type(x)):
            items[i] = BaseModel.model_copy(x, update={"id": f"{head}{first + i}"})


class GenerateSource(Source[R]):
    """Deterministic synthetic records from a seed.

    ``factory(rng, i)`` makes record number ``i`` (an event, a dict or JSON
    text) with the partition's own ``random.Random``. Partition ``p`` makes
    records ``p, p + P, p + 2P, ...``; the same seed and partition count
    always give the same records, whatever the worker count. ``count=None``
    makes an unbounded source; ``rate`` caps records per second in all.
    """

    def __init__(
        self,
        factory: Factory,
        *,
        count: int | None,
        seed: int = 0,
        partitions: int = 1,
        rate: float | None = None,
        schema: Schema | None = None,
        batch_size: int = DEFAULT_BATCH,
        name: str = "generate",
    ) -> None:
        """Describe the generator; nothing is made until it runs."""
        if not callable(factory):
            msg = (
                f"generate: factory must be callable as factory(rng, index); got "
                f"{type(factory).__name__}."
            )
            raise TypeError(msg)
        hint = "generate(lambda rng, i: Click(user=f'u{rng.randrange(9)}'), count=100)."
        check_arity(factory, 2, "generate", "factory", "a random.Random and the index", hint)
        if count is not None and count < 0:
            msg = f"generate: count must be zero or more, or None for unbounded; got {count}."
            raise ValueError(msg)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            msg = f"generate: partitions must be a whole number of at least 1; got {partitions!r}."
            raise ValueError(msg)
        if rate is not None and not 0 < rate < math.inf:
            msg = f"generate: rate must be a positive number of records per second; got {rate}."
            raise ValueError(msg)
        self.factory = factory
        self.count = count
        self.seed = seed
        self.parts = partitions
        self.rate = rate
        self.schema = schema
        self.batch_size = _check_batch(batch_size)
        self.name = name

    @property
    def label(self) -> str:
        """Name the read step after the generator."""
        return self.name

    def partitions(self) -> list[str]:
        """One partition name per part."""
        return [f"gen{p}" for p in range(self.parts)]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Start (or resume) one part of the sequence."""
        return _GenerateReader(self, int(partition[3:]), step, resume)


class _StdinReader(Reader):
    """Hands on the lines of standard input as they arrive, never waiting for more.

    What the pipe holds now is read without blocking; when it holds nothing,
    the reader says so (the partition can then go idle and event-time windows
    close while an open pipe is silent) and asks again shortly.
    """

    read_ahead = False  # a pipe may be slow: hand each chunk on as it is read

    def __init__(self, step: str, batch: int) -> None:
        self.step = step
        self.batch = batch
        self.line = 0
        self.stream = sys.stdin.buffer
        try:
            self.fd: int | None = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's stand-in)
            self.fd = None
        self.pending = b""
        self.ready: list[bytes] = []
        self.ended = False
        self.waiting = False

    def _take(self) -> None:
        """Take what standard input holds now."""
        if self.fd is None:
            line = self.stream.readline()
            if line:
                self.ready.append(line.rstrip(b"\r\n"))
            else:
                self.ended = True
            return
        if not select.select([self.fd], [], [], 0)[0]:
            return
        data = os.read(self.fd, 1 << 16)
        if not data:
            self.ended = True
            if self.pending:
                self.ready.append(self.pending.rstrip(b"\r"))
                self.pending = b""
            return
        *lines, self.pending = (self.pending + data).split(b"\n")
        self.ready.extend(line.rstrip(b"\r") for line in lines)

    def next_chunk(self) -> Chunk | None:
        if not self.ready and not self.ended:
            self._take()
        if not self.ready:
            if self.ended:
                raise StopIteration
            self.waiting = True
            return None
        self.waiting = False
        lines, self.ready = self.ready[: self.batch], self.ready[self.batch :]
        chunk = Chunk(lines, self.step, "stdin", self.line, file="<stdin>", line=self.line + 1)
        self.line += len(lines)
        return chunk

    def next_awake(self) -> datetime | None:
        """Ask again in 20 ms when the pipe held nothing."""
        if not self.waiting:
            return None
        return datetime.now(timezone.utc) + timedelta(milliseconds=20)

    def position(self) -> int:
        return self.line


class StdinSource(Source[R]):
    """JSON Lines read from standard input (one partition); it cannot be replayed."""

    replayable = False

    def __init__(self, *, schema: Schema, batch_size: int = DEFAULT_BATCH) -> None:
        """Read standard input until it closes."""
        self.schema = schema
        self.batch_size = _check_batch(batch_size)

    @property
    def label(self) -> str:
        """Name the read step."""
        return "stdin"

    def partitions(self) -> list[str]:
        """Return the one partition of standard input."""
        return ["stdin"]

    def open(self, partition: str, step: str, resume: Any | None) -> Reader:
        """Read from standard input (it cannot be replayed)."""
        return _StdinReader(step, self.batch_size)
