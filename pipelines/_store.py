"""Checking a recovery store before resuming from it.

bytewax keeps snapshots as pickles in SQLite files; unpickling runs whatever
the pickle names. Before a run resumes, evflow reads every snapshot with a
restricted unpickler that allows only evflow's own state types and plain data,
and refuses the store if anything else is there.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["UnsafeSnapshotError", "check_store"]

_ALLOWED = {
    "builtins": {
        "dict",
        "list",
        "set",
        "frozenset",
        "tuple",
        "int",
        "float",
        "str",
        "bytes",
        "bytearray",
        "bool",
        "complex",
        "object",
        "slice",
        "range",
    },
    "copyreg": {"_reconstructor"},
    "collections": {"Counter", "OrderedDict", "deque", "defaultdict"},
    "datetime": {"datetime", "date", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
}
_PACKAGES = ("operators", "ddsketch")


class UnsafeSnapshotError(PermissionError):
    """A recovery store holds something other than evflow state: not resumed."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get(module)
        if (allowed is not None and name in allowed) or module.split(".")[0] in _PACKAGES:
            return super().find_class(module, name)
        msg = f"{module}.{name}"
        raise pickle.UnpicklingError(msg)


def check_store(directory: Path) -> int:
    """Read every snapshot in ``directory`` safely; return how many were checked.

    Raises `UnsafeSnapshotError` naming the step and the forbidden global.
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
                f"recovery partition ({exc}). Hint: remove the store to start afresh."
            )
            raise UnsafeSnapshotError(msg) from None
        for step, key, blob in rows:
            try:
                _Restricted(io.BytesIO(blob)).load()
            except pickle.UnpicklingError as exc:
                msg = (
                    f"recovery store {str(directory)!r} holds a snapshot of step {step!r} "
                    f"(key {key!r}) that refers to {exc}, which is not evflow state; evflow "
                    f"will not resume from it (unpickling it would run that code). Hint: "
                    f"remove the store to start afresh, or find who wrote to it."
                )
                raise UnsafeSnapshotError(msg) from None
            checked += 1
    return checked
