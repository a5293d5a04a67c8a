"""Keep the engine's panic reports off the user's terminal.

When a run halts, is stopped (Ctrl-C, SIGTERM) or loses a peer, the engine
unwinds with a Rust panic and prints the panic (with a backtrace when
``RUST_BACKTRACE`` is set) on standard error, before evflow can say what
happened. evflow reports the root cause itself, so while the engine runs,
standard error goes through a filter that drops those reports and passes
everything else on, line by line. ``EVFLOW_SHOW_PANICS=1`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["drop_panics", "quiet_panics"]

_HEADER = re.compile(r"^thread '.*' panicked at ")
# What the engine's own hook prints when a member loses its peer.
_REPORTED = re.compile(r"^\w+: \(src/\S+\.rs:\d+:\d+\) panicked at ")
_NOTE = re.compile(r"^note: .*RUST_BACKTRACE")
# The start of a report that a member stopped in the middle of writing it left
# behind: "RuntimeError" of "RuntimeError: (src/...) panicked at ...".
_CUT = re.compile(r"thread '.*|\w*(Error|Exception)(: ?(\(.*)?)?")


def drop_panics(lines: Iterable[str]) -> Iterator[str]:
    r"""Pass on the lines that are not part of an engine panic report.

    A report is a header, its message (one line), then either a note about
    ``RUST_BACKTRACE`` or a backtrace (indented lines, then a note).

    >>> report = [
    ...     "thread '<unnamed>' panicked at src/operators.rs:198:33:\n",
    ...     "Box<dyn Any>\n",
    ...     "stack backtrace:\n",
    ...     "   0: std::panicking::begin_panic\n",
    ...     "             at /rustc/library/std/src/panicking.rs:1\n",
    ...     "note: Some details are omitted, run with `RUST_BACKTRACE=full` for more.\n",
    ... ]
    >>> list(drop_panics(["before\n", *report, "after\n"]))
    ['before\n', 'after\n']

    A member stopped while it writes a report leaves its start with no end of
    line: that last fragment is dropped too, so that what is printed next
    starts a line of its own.

    >>> list(drop_panics(["before\n", "RuntimeError"]))
    ['before\n']
    >>> list(drop_panics(["before\n", "RuntimeError: (src/run.rs:2"]))
    ['before\n']
    >>> list(drop_panics(["before\n", "50% done"]))
    ['before\n', '50% done']
    >>> list(drop_panics(["before\n", "done"]))
    ['before\n', 'done']
    """
    state = "pass"
    after_report = False
    for line in lines:
        if _HEADER.match(line) or _REPORTED.match(line):
            state = "message"
            continue
        if state == "message":
            state = "after_message"
            continue
        if state in ("after_message", "backtrace"):
            if state == "after_message" and line.startswith("stack backtrace:"):
                state = "backtrace"
                continue
            if state == "backtrace" and line[:1].isspace():
                continue
            state = "pass"
            after_report = True
            if _NOTE.match(line):
                continue
        if after_report and not line.strip():
            continue  # the engine's blank line after a report
        if not line.endswith("\n") and _CUT.fullmatch(line):
            continue  # a report cut short (only the last line can lack its end)
        after_report = False
        yield line


#: The standard error file descriptors that `quiet_panics` set aside, innermost last.
_SAVED: list[int] = []


def unfiltered_stderr() -> None:
    """Point standard error straight at the terminal again (for last words before an exit).

    While `quiet_panics` filters standard error through a thread, what is
    written just before ``os._exit`` could die in the pipe with that thread.
    """
    if _SAVED:
        sys.stderr.flush()
        os.dup2(_SAVED[0], 2)


@contextlib.contextmanager
def quiet_panics() -> Iterator[None]:
    """Filter standard error (the file descriptor) through `drop_panics` meanwhile.

    The engine also prints some errors it raises (a single worker resumed from
    a store of several, halted): those go unprinted too, evflow reports them.
    """
    if os.environ.get("EVFLOW_SHOW_PANICS") == "1":
        yield
        return
    previous = sys.excepthook
    #: Blank lines to drop: the engine ends each error it prints with one.
    blanks = [0]

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if kind.__module__.startswith("bytewax"):
            blanks[0] += 1
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
    try:
        with _filtered_stderr(blanks):
            yield
    finally:
        sys.excepthook = previous


@contextlib.contextmanager
def _filtered_stderr(blanks: list[int]) -> Iterator[None]:
    """Send standard error (the file descriptor) through `drop_panics` meanwhile.

    ``blanks[0]`` blank lines still to come are dropped too.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no standard error to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    _SAVED.append(saved)

    def forward() -> None:
        with open(read_end, "rb") as pipe, open(saved, "wb", buffering=0, closefd=False) as out:
            for line in drop_panics(raw.decode(errors="surrogateescape") for raw in pipe):
                if line == "\n" and blanks[0]:
                    blanks[0] -= 1
                    continue
                out.write(line.encode(errors="surrogateescape"))

    thread = threading.Thread(target=forward, name="evflow-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer: the thread sees the end
        thread.join(5)
        _SAVED.remove(saved)
        os.close(saved)
