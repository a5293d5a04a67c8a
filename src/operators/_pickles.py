"""What a snapshot may hold: the pickles a resume accepts, checked without running them.

Unpickling runs whatever the pickle names. A snapshot may name only an
explicit list of exact ``module.qualname`` pairs: evflow's state types, plain
data, and the classes the running program has defined (its event classes,
and its NamedTuples, Enums and dataclasses that unpickling only fills in).
`check_snapshot` reads a pickle's opcodes without executing any of them;
`check_state` samples a step's state as it is snapshotted, so state that a
resume would refuse stops the run at its first snapshot, not after a crash.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import pickletools
import sys
import sysconfig
from collections.abc import Iterable
from itertools import islice
from typing import Any

__all__ = ["SAFE_GLOBALS", "StateNotSavable", "check_snapshot", "check_state"]

#: The globals a snapshot may name: exact ``(module, qualname)`` pairs, each a
#: class or constructor that builds plain data and calls nothing else.
SAFE_GLOBALS = frozenset(
    [
        *(
            ("builtins", name)
            for name in (
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "object",
                "set",
                "str",
                "tuple",
            )
        ),
        ("copyreg", "_reconstructor"),
        ("collections", "Counter"),
        ("collections", "OrderedDict"),
        ("collections", "deque"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        # What a process step's on_timer gets, if a state keeps it.
        ("operators._process", "Timer"),
        # Value types events often hold: each built from its text or number alone.
        ("uuid", "UUID"),
        ("uuid", "SafeUUID"),
        *(
            ("ipaddress", f"IPv{v}{kind}")
            for v in (4, 6)
            for kind in ("Address", "Network", "Interface")
        ),
        *(("pathlib", name) for name in ("PosixPath", "PurePosixPath", "PureWindowsPath")),
        *(
            ("pydantic.networks", name)
            for name in (
                "AnyUrl",
                "AnyHttpUrl",
                "HttpUrl",
                "AnyWebsocketUrl",
                "WebsocketUrl",
                "FileUrl",
                "FtpUrl",
            )
        ),
        ("pydantic_core._pydantic_core", "Url"),
        ("pydantic_core._pydantic_core", "MultiHostUrl"),
        ("pydantic.types", "SecretStr"),
        ("pydantic.types", "SecretBytes"),
        # The fixed-offset timezone pydantic gives times parsed from JSON (held
        # by join and process state): built from a number of seconds, nothing else.
        ("pydantic_core._pydantic_core", "TzInfo"),
        ("ddsketch.ddsketch", "DDSketch"),
        ("ddsketch.ddsketch", "BaseDDSketch"),
        ("ddsketch.mapping", "LogarithmicMapping"),
        ("ddsketch.store", "DenseStore"),
        ("ddsketch.store", "CollapsingLowestDenseStore"),
        ("ddsketch.store", "CollapsingHighestDenseStore"),
        # Marker classes (no instances are made) that bound a store's index range.
        ("ddsketch.store", "_NegativeIntInfinity"),
        ("ddsketch.store", "_PositiveIntInfinity"),
    ]
)

# Opcodes that push a string an opcode naming a global may take from the stack.
_STRINGS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
# Opcodes that reach objects no allow-list can vouch for.
_REFUSED = {
    "EXT1": "an extension-registry code",
    "EXT2": "an extension-registry code",
    "EXT4": "an extension-registry code",
    "PERSID": "a persistent id",
    "BINPERSID": "a persistent id",
}


def _program_class(module: str, name: str) -> bool:
    """Whether ``module.name`` is a class of this program that a snapshot may name.

    An evflow event class or a pydantic model (held in events), or a plain
    data class (a NamedTuple, an Enum, a dataclass: see `_plain`) defined
    outside the installed packages. Looked
    up in the modules already imported, never importing one (that would run
    its code), and only by a plain name (no attribute paths).
    """
    found = getattr(sys.modules.get(module), "__dict__", {}).get(name)
    if not isinstance(found, type):
        return False
    if found.__module__ != module or found.__qualname__ != name:
        return False
    from pydantic import BaseModel

    from operators._event import Event

    if issubclass(found, Event):
        return True
    if issubclass(found, BaseModel):
        # A model inside an event: unpickling fills it in with pydantic's own
        # hooks (no validator runs), unless a class of the program has its own.
        return not any(
            hook in vars(c)
            for c in found.__mro__
            if not c.__module__.startswith("pydantic") and c is not object
            for hook in _HOOKS
        )
    return not _installed(module) and _plain(found)


def _installed(module: str) -> bool:
    """Whether a module comes with Python or an installed package (not the program)."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if path is None:
        return module != "__main__"
    where = os.path.realpath(path)
    return any(where.startswith(root + os.sep) for root in _LIBRARIES)


_LIBRARIES = sorted(
    {
        os.path.realpath(sysconfig.get_paths()[name])
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
    }
)
#: What unpickling may call on an instance or its class: a plain data class has its own
#: none of these (dataclasses' own frozen-instance helpers aside).
_HOOKS = (
    "__new__",
    "__setstate__",
    "__reduce__",
    "__reduce_ex__",
    "__getattr__",
    "__getattribute__",
    "__post_init__",
    "__set_name__",
)


def _plain(cls: type) -> bool:
    """Whether unpickling ``cls`` (or calling it) only fills in fields.

    A NamedTuple (made by ``tuple.__new__``), an Enum whose values are looked
    up (no ``_missing_`` of its own), or a dataclass whose classes are all
    dataclasses with a generated ``__init__`` and none of `_HOOKS`.

    >>> from dataclasses import dataclass
    >>> from typing import NamedTuple
    >>> @dataclass
    ... class Seen:
    ...     n: int = 0
    >>> class Pair(NamedTuple):
    ...     a: int
    >>> _plain(Seen), _plain(Pair), _plain(dict)
    (True, True, False)
    """
    if cls.__bases__ == (tuple,) and "_fields" in vars(cls) and "_make" in vars(cls):
        return True
    if issubclass(cls, enum.Enum):
        return getattr(cls._missing_, "__func__", None) is vars(enum.Enum)["_missing_"].__func__
    if not dataclasses.is_dataclass(cls):
        return False
    for c in cls.__mro__[:-1]:
        params = vars(c).get("__dataclass_params__")
        if params is None or not params.init:
            return False
        for hook in _HOOKS:
            own = vars(c).get(hook)
            if own is not None and getattr(own, "__module__", None) != "dataclasses":
                return False
        if "__setattr__" in vars(c) and not params.frozen:
            return False
    return True


def _allowed(module: str, name: str) -> bool:
    if (module, name) in SAFE_GLOBALS:
        return True
    return "." not in name and _program_class(module, name)


def _foreign(module: str, qualname: str) -> str:
    name = module + "." + qualname
    found = getattr(sys.modules.get(module), "__dict__", {}).get(qualname)
    if isinstance(found, type) and not _installed(module):
        return (
            f"refers to the class {name!r} of this program, which is not plain data (an "
            f"event, a pydantic model, a NamedTuple, an Enum, or a dataclass without "
            f"__post_init__, __setstate__ or such hooks)"
        )
    return f"refers to the global {name!r}, which is not evflow state"


def check_snapshot(blob: bytes) -> str | None:
    """Walk a pickle's opcodes (nothing is run); return what is refused, or None.

    >>> import pickle
    >>> check_snapshot(pickle.dumps({"wins": [1.5, "a"]})) is None
    True
    >>> check_snapshot(pickle.dumps(print))
    "refers to the global 'builtins.print', which is not evflow state"
    """
    recent: list[str | None] = []  # what the last opcodes pushed, strings known
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _ in pickletools.genops(blob):
            name = opcode.name
            if name in _REFUSED:
                return f"refers to {_REFUSED[name]} ({name})"
            if name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                if not _allowed(module, qualname):
                    return _foreign(module, qualname)
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or recent[-1] is None or recent[-2] is None:
                    return (
                        "refers to a global whose name is computed, not written out (STACK_GLOBAL)"
                    )
                module, qualname = recent[-2], recent[-1]
                if not _allowed(module, qualname):
                    return _foreign(module, qualname)
                recent.append(None)
            elif name in _MEMO_PUT:
                index = len(memo) if name == "MEMOIZE" else int(str(arg))
                memo[index] = recent[-1] if recent else None
            elif name in _MEMO_GET:
                recent.append(memo.get(int(str(arg))))
            elif name in _STRINGS:
                recent.append(arg if isinstance(arg, str) else None)
            else:
                recent.append(None)
            del recent[:-2]
    except Exception as exc:  # noqa: BLE001 - a damaged pickle is described, not raised
        return f"is damaged ({type(exc).__name__}: {exc})"
    return None


class StateNotSavable(TypeError):
    """A step keeps state that a snapshot cannot hold, or that a resume would refuse."""


def _sample(value: Any, depth: int = 0) -> Any:
    """Return a few of a container's items, to the third level (keeping dicts and lists)."""
    if depth > 2:
        return value
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
        if len(value) > 4 and depth:  # a snapshot's own fields are all kept
            items = [*islice(value.items(), 2), *islice(reversed(value.items()), 2)]
        return {k: _sample(v, depth + 1) for k, v in items}
    if value.__class__ in (list, tuple):  # not a NamedTuple: pickled as it is
        picked = value if len(value) <= 4 else [*value[:2], *value[-2:]]
        return value.__class__(_sample(v, depth + 1) for v in picked)
    return value


def check_state(step: str, snapshot: Any) -> None:
    """Check a sample of a snapshot as a resume would; raise `StateNotSavable` if refused.

    >>> check_state("s", {"states": {"k": [1, 2.5, "x"]}})
    >>> try:
    ...     check_state("s", {"states": {"k": print}})
    ... except StateNotSavable as e:
    ...     print(str(e)[:89])
    step 's' keeps state that a resume would refuse: it refers to the global 'builtins.print'
    """
    hint = (
        "Hint: keep plain data in state (numbers, strings, lists, dicts, tuples, "
        "datetimes), events and pydantic models, or NamedTuples, Enums and dataclasses "
        "defined in your program."
    )
    try:
        blob = pickle.dumps(_sample(snapshot))
    except Exception as exc:  # noqa: BLE001 - said with the step and a hint
        msg = (
            f"step {step!r} keeps state that cannot be snapshotted "
            f"({type(exc).__name__}: {exc}). {hint}"
        )
        raise StateNotSavable(msg) from None
    refused = check_snapshot(blob)
    if refused is not None:
        msg = f"step {step!r} keeps state that a resume would refuse: it {refused}. {hint}"
        raise StateNotSavable(msg)
