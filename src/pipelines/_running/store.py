"""The recovery store: who may use it, one run at a time, and what it may hold.

bytewax keeps snapshots as pickles in SQLite files, and unpickling runs
whatever the pickle names. Before a run resumes, evflow reads every snapshot's
opcodes without executing any of them (``pickletools``) and allows only an
explicit list of exact ``module.qualname`` pairs (`operators._pickles`):
evflow's state types, plain data, and the classes the running program has
defined (events, NamedTuples, Enums, dataclasses). The store
itself must belong to the user who runs evflow and be writable by no one
else, and it is locked for the whole run, so a second run on it is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import select
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from operators._keying import held_in, told
from operators._pickles import SAFE_GLOBALS, check_snapshot

__all__ = [
    "SAFE_GLOBALS",
    "StoreInUseError",
    "UnsafeSnapshotError",
    "check_partitions",
    "check_permissions",
    "check_snapshot",
    "check_store",
    "lock_store",
]


class UnsafeSnapshotError(PermissionError):
    """A recovery store holds something other than evflow state, or others can change it."""


class StoreInUseError(RuntimeError):
    """Another run holds the recovery store."""


def check_store(directory: Path) -> int:
    """Check every snapshot in ``directory`` without running it; return how many.

    Raises `UnsafeSnapshotError` naming the store, the file, the step and
    what is wrong.
    """
    checked = 0
    for part in sorted(directory.glob("*.sqlite3")):
        try:
            # Opened as bytewax opens it (the store is in WAL mode, which a
            # read-only connection cannot always read), and closed at once.
            with contextlib.closing(sqlite3.connect(part)) as db:
                rows = db.execute(
                    "SELECT step_id, state_key, ser_change FROM snaps WHERE ser_change IS NOT NULL"
                ).fetchall()
        except sqlite3.Error as exc:
            msg = (
                f"recovery store {str(directory)!r}: {part.name} is not a readable evflow "
                f"recovery partition ({exc}). Hint: remove the store (and the outputs "
                f"written with it) to start over."
            )
            raise UnsafeSnapshotError(msg) from None
        for step, key, blob in rows:
            refused = (
                check_snapshot(blob)
                if isinstance(blob, bytes)
                else f"is a {type(blob).__name__}, not a pickle"
            )
            if refused is not None:
                msg = (
                    f"recovery store {str(directory)!r} ({part.name}) holds a snapshot of "
                    f"step {step!r} (key {key!r}) that {refused}; evflow will not resume "
                    f"from it (nothing of it was run: unpickling what is not evflow state "
                    f"could run code). Hint: remove the store (and the outputs written with "
                    f"it) to start over, or find who wrote to it."
                )
                raise UnsafeSnapshotError(msg)
            checked += 1
    return checked


def check_partitions(directory: Path, partitions: dict[str, Callable[[], list[str]]]) -> None:
    """Refuse to resume a store whose partitioned steps had partitions this run lacks.

    Sources and exactly-once files keep their state by partition (a file's
    absolute path, a generator's part); a snapshot of a partition this run
    does not have would be lost, and the engine stops on it with a panic.
    """
    from operators import ResumeError

    kept: dict[str, set[str]] = {}
    for part in sorted(directory.glob("*.sqlite3")):
        with contextlib.closing(sqlite3.connect(part)) as db:
            for step, key in db.execute(
                "SELECT DISTINCT step_id, state_key FROM snaps WHERE ser_change IS NOT NULL"
            ):
                kept.setdefault(step, set()).add(key)
    for step, listed in partitions.items():
        if step not in kept:
            continue
        try:
            now = set(listed())
        except Exception:  # noqa: BLE001 - the run itself reports a source that fails
            continue
        gone = sorted(kept[step] - now)
        if gone:
            msg = (
                f"recovery store {str(directory)!r} holds the state of step "
                f"{step.split('.', 1)[1]!r} for partition(s) {gone}, which this run does not "
                f"have (it has {sorted(now)}): a relative path now points elsewhere (was the "
                f"run started from another directory?), or the input changed. Hint: run from "
                f"the directory the store was made in, or use absolute paths; or remove the "
                f"store and the outputs written with it to start over."
            )
            raise ResumeError(msg)


def check_steps(directory: Path, steps: set[str], shown: list[str]) -> None:
    """Refuse to resume a store that holds the state of steps this run lacks.

    ``steps`` are the engine's step ids of this run, ``shown`` the names of
    its steps that keep state (for the message). A step whose name
    changed (an aggregate's default name says its window and fields) or that
    was removed would start afresh and its snapshot be dropped: the events in
    its open windows lost, its source read again from the start. A step whose
    snapshot holds nothing (all its windows closed) is no loss.
    """
    from operators import ResumeError

    with contextlib.ExitStack() as stack:
        dbs = [
            stack.enter_context(contextlib.closing(sqlite3.connect(part)))
            for part in sorted(directory.glob("*.sqlite3"))
        ]
        resume = _resume_point(dbs)
        if resume is None:
            return
        latest: dict[tuple[str, str], tuple[int, Any]] = {}
        for db in dbs:
            kept = {step for (step,) in db.execute("SELECT DISTINCT step_id FROM snaps")}
            for step in sorted(kept - steps):  # only their snapshots are read
                for key, epoch, blob in db.execute(
                    "SELECT state_key, snap_epoch, ser_change FROM snaps "
                    "WHERE step_id = ? AND snap_epoch < ?",
                    (step, resume),
                ):
                    before = latest.get((step, key))
                    if before is None or epoch > before[0]:
                        latest[(step, key)] = (epoch, blob)
    lost: dict[str, Counter[str]] = {}
    for (step, _key), (_, blob) in sorted(latest.items()):
        if not isinstance(blob, bytes) or check_snapshot(blob) is not None:
            continue  # no state (or one `check_store` refuses)
        said = held_in(pickle.loads(blob))  # its opcodes were checked just above
        if said:
            lost.setdefault(step, Counter()).update(said)
    # A step id is "pipeline.step": whose pipelines' steps the state is of.
    ours = {step.split(".", 1)[0] for step in steps}
    theirs = sorted({step.split(".", 1)[0] for step in lost})
    if theirs and not ours.intersection(theirs):
        # Not one of its steps is this pipeline's: another pipeline wrote the store.
        named = ", ".join(map(repr, sorted(ours)))
        msg = (
            f"recovery store {str(directory)!r} holds the state of pipeline(s) "
            f"{', '.join(map(repr, theirs))}, not of pipeline {named}: "
            f"resuming from it would read this pipeline's inputs from another's positions, or "
            f"drop that pipeline's state. Hint: give each pipeline a store of its own; resume "
            f"{theirs[0]!r} with this store."
        )
        raise ResumeError(msg)
    if lost:
        gone = "; ".join(f"{step.split('.', 1)[-1]!r}: {told(said)}" for step, said in lost.items())
        msg = (
            f"recovery store {str(directory)!r} holds the state of step(s) this pipeline "
            f"does not have ({gone}): resuming would drop it, and what it holds with it (the "
            f"events of open windows; a source's position, so its input would be read "
            f"again). This pipeline's steps that keep state are {shown}; an aggregate's "
            f"default name says its window and fields (aggregate_tumbling_10s_n), so "
            f"changing them renames it. Hint: resume with the pipeline as it was (and change "
            f"it once the run has ended); or remove the store and the outputs written with it "
            f"to start over."
        )
        raise ResumeError(msg)


def check_permissions(directory: Path) -> None:
    """Refuse a store that another user owns or can write, or that holds links.

    Snapshots are pickles that run code when resumed, so the directory and
    every file in it must belong to the user running evflow and be writable
    by no one else.
    """
    me = os.geteuid()
    for path in [directory, *sorted(directory.iterdir())]:
        info = path.lstat()
        where = "recovery directory" if path == directory else "recovery store file"
        if stat.S_ISLNK(info.st_mode):
            msg = (
                f"{where} {str(path)!r} is a symbolic link; a store may hold only its own "
                f"files, so evflow will not use it. Hint: remove the link."
            )
            raise UnsafeSnapshotError(msg)
        if info.st_uid != me:
            msg = (
                f"{where} {str(path)!r} belongs to user id {info.st_uid}, not to you "
                f"({me}); its snapshots are pickles that run code when resumed, so evflow "
                f"will not use it. Hint: remove it, or have its owner hand it over "
                f"(chown -R $USER {directory})."
            )
            raise UnsafeSnapshotError(msg)
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            msg = (
                f"{where} {str(path)!r} can be written by other users (mode "
                f"{stat.filemode(info.st_mode)}); its snapshots are pickles that run code "
                f"when resumed, so evflow will not use it. Hint: chmod go-w {path}."
            )
            raise UnsafeSnapshotError(msg)


_LOCK = ".evflow.lock"


def _holders(directory: Path) -> str:
    """Say what the runs holding the store wrote into its lock files."""
    said = []
    for path in sorted(directory.glob(_LOCK + "*")):
        with contextlib.suppress(OSError):
            said += [line for line in path.read_text().splitlines() if line.strip()]
    return "; ".join(said) or "a process that did not say who it is"


@contextlib.contextmanager
def lock_store(directory: Path, member: int | None = None) -> Iterator[None]:
    """Hold the store for one run; refuse at once when another run holds it.

    The lock is an ``flock`` on a file in the store, so the kernel releases it
    when its process dies, whatever kills it. A run takes it exclusively; the
    members of a cluster started by hand (``member`` is the process id) share
    it, and each holds its own member lock, so two members with the same id
    are refused too.
    """
    held: list[tuple[int, bool]] = []
    try:
        names = [(_LOCK, member is None)]
        if member is not None:
            names.append((f"{_LOCK}.{member}", True))
        for name, exclusive in names:
            fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                msg = (
                    f"recovery store {str(directory)!r} is in use by another run "
                    f"({_holders(directory)}); two runs on one store lose and duplicate "
                    f"records. Hint: wait for that run to end (or stop it), or give this "
                    f"one another --recovery directory."
                )
                raise StoreInUseError(msg) from None
            held.append((fd, exclusive))
            if exclusive:
                started = datetime.now(timezone.utc).isoformat(timespec="seconds")
                who = f"pid {os.getpid()} on {socket.gethostname()}, started {started}"
                if member is not None:
                    who = f"cluster member {member}, {who}"
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{who}: {' '.join(sys.argv)[:200]}\n".encode(), 0)
        yield
    finally:
        for fd, exclusive in reversed(held):
            if exclusive:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # the holder's line goes with its lock
            os.close(fd)


def _resume_epoch(db: sqlite3.Connection) -> int | None:
    """Return the epoch a run resumed from this partition file would start at (None: none)."""
    latest = db.execute(
        "SELECT ex_num, worker_count, resume_epoch FROM exs ORDER BY ex_num DESC LIMIT 1"
    ).fetchone()
    if latest is None:
        return None
    ex_num, workers, resume = int(latest[0]), int(latest[1]), int(latest[2])
    # Each worker's progress is its highest frontier in this execution (at
    # least the epoch the execution started at); a resume starts at the lowest.
    reached: dict[int, int] = dict.fromkeys(range(workers), resume)
    for worker, frontier in db.execute(
        "SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?", (ex_num,)
    ):
        reached[worker] = max(reached.get(worker, resume), int(frontier))
    return min(reached.values())


def _resume_point(dbs: list[sqlite3.Connection]) -> int | None:
    """Return the epoch a run resumed from these partition files starts at (None: none)."""
    known = [e for e in map(_resume_epoch, dbs) if e is not None]
    return min(known) if known else None


def store_created(directory: Path) -> float | None:
    """Return when the store was made (epoch seconds, whole), read before the engine opens it."""
    found: list[float] = []
    for part in sorted(directory.glob("*.sqlite3")):
        with contextlib.closing(sqlite3.connect(part)) as db:
            for (made,) in db.execute("SELECT created_at FROM parts"):
                try:
                    # SQLite's CURRENT_TIMESTAMP: UTC, to the second.
                    when = datetime.strptime(f"{made} +0000", "%Y-%m-%d %H:%M:%S %z")
                except (TypeError, ValueError):
                    continue  # not the engine's stamp: no time to go by
                found.append(when.timestamp())
    return min(found) if found else None


def durable_blob(directory: Path, step_id: str, key: str) -> bytes | None:
    """Return the snapshot of ``key`` of ``step_id`` that a resume would start from now.

    Read-only connections; meant for another process than the run's (see
    `DurableStates`): two copies of SQLite in one process (the engine's and
    Python's) do not see each other's file locks.
    """
    with contextlib.ExitStack() as stack:
        dbs = [
            stack.enter_context(
                contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True))
            )
            for part in sorted(directory.glob("*.sqlite3"))
        ]
        resume = _resume_point(dbs)
        if resume is None:
            return None
        best: tuple[int, Any] | None = None
        for db in dbs:
            row = db.execute(
                "SELECT snap_epoch, ser_change FROM snaps WHERE step_id = ? AND state_key = ? "
                "AND snap_epoch < ? ORDER BY snap_epoch DESC LIMIT 1",
                (step_id, key, resume),
            ).fetchone()
            if row is not None and (best is None or row[0] > best[0]):
                best = row
    return best[1] if best is not None and isinstance(best[1], bytes) else None


#: Seconds the store's helper process has to answer before it is replaced.
ANSWER_WITHIN = 10.0


class DurableStates:
    """Ask a helper process what a resume would start from, for readers that acknowledge.

    ``states(step_id, key)`` returns ``(True, state)`` or ``(False, None)``.
    The store is read by a process of its own (started on first use), since
    reading it beside the engine in this process could drop the engine's
    file locks; the state is unpickled here once its opcodes pass
    `check_snapshot`.
    """

    def __init__(self, directory: Path) -> None:
        """Read ``directory``'s store when asked."""
        self.directory = directory
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()
        #: The helper's command line.
        self.command = [sys.executable, "-m", "pipelines._running.store", str(directory)]

    def __call__(self, step_id: str, key: str) -> tuple[bool, Any]:
        """Return the state of ``key`` of ``step_id`` that the store holds durably."""
        with self.lock:
            try:
                if self.proc is None:
                    self.proc = subprocess.Popen(
                        self.command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                assert self.proc.stdin is not None and self.proc.stdout is not None
                self.proc.stdin.write(json.dumps([step_id, key]) + "\n")
                self.proc.stdin.flush()
                ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_WITHIN)
                if not ready:
                    # A helper that does not answer is replaced: nothing is
                    # acknowledged meanwhile (it stays pending, never lost).
                    self._stop(kill=True)
                    return False, None
                answer = self.proc.stdout.readline().strip()
            except (OSError, ValueError):
                self._stop(kill=True)
                return False, None
        if not answer:
            return False, None
        blob = bytes.fromhex(answer)
        if check_snapshot(blob) is not None:
            return False, None
        return True, pickle.loads(blob)  # its opcodes were checked just above

    def close(self) -> None:
        """Stop the helper process."""
        with self.lock:
            self._stop(kill=False)

    def _stop(self, *, kill: bool) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _serve(directory: Path) -> None:
    """Answer ``[step_id, key]`` lines with the durable snapshot's hex (empty: none)."""
    for line in sys.stdin:
        step_id, key = json.loads(line)
        try:
            blob = durable_blob(directory, step_id, key)
        except sqlite3.Error:
            blob = None
        sys.stdout.write((blob.hex() if blob else "") + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
