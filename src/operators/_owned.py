"""Each reader's own record: copies of mutable records where one record would reach two readers.

A record a step hands to several readers (a stream read by two steps, a
record on several ``mode="all"`` routes, an event with several handlers) is
each reader's own, as a record read from a file or a broker is: a function
that changes its input in place (``e["seen"] = True``) changes nothing that
another branch, or a later run of the same pipeline, sees. Immutable records
(numbers, text, frozen events such as `Event`, tuples of these) are handed on
as they are, so the common case costs one dictionary lookup; a mutable one (a
dict, a list, an object that is not frozen) is deep-copied.

>>> shared = {"n": 1}
>>> mine = own(shared)
>>> mine == shared, mine is shared
(True, False)
>>> text = "a"
>>> own(text) is text, own((1, "a")) == (1, "a")
(True, True)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import fractions
import types
import typing
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pydantic
from pydantic import BaseModel

__all__ = ["all_fixed", "own", "owned"]

# How a type's values are handed to a further reader.
_SHARE = 0  # immutable: the value itself
_LOOK = 1  # immutable itself, but what it holds may not be: look at the value
_COPY = 2  # mutable: a deep copy

_SCALARS: frozenset[type] = frozenset(
    {
        str,
        int,
        float,
        bool,
        complex,
        bytes,
        type(None),
        type(Ellipsis),
        Decimal,
        fractions.Fraction,
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        dt.timezone,
        uuid.UUID,
        range,
        types.FunctionType,
        types.BuiltinFunctionType,
        type,
        # pydantic's marks for datetime fields: their values are datetimes
        pydantic.AwareDatetime,
        pydantic.NaiveDatetime,
        pydantic.PastDatetime,
        pydantic.FutureDatetime,
        pydantic.PastDate,
        pydantic.FutureDate,
    }
)

_KINDS: dict[type, int] = {t: _SHARE for t in _SCALARS}


def _fixed_annotation(annotation: Any) -> bool:
    """Whether every value a field of this annotation may hold is immutable."""
    if isinstance(annotation, type):
        return _kind(annotation) == _SHARE
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return True
    if origin is typing.Annotated:
        return _fixed_annotation(args[0])
    if origin in (typing.Union, types.UnionType, tuple, frozenset):
        return all(a is Ellipsis or _fixed_annotation(a) for a in args)
    return False


def _kind(cls: type) -> int:
    """Return how values of ``cls`` are handed on (worked out once per type)."""
    found = _KINDS.get(cls)
    if found is not None:
        return found
    kind = _COPY
    if issubclass(cls, enum.Enum) or cls in _SCALARS:
        kind = _SHARE
    elif issubclass(cls, tuple | frozenset):
        kind = _LOOK
    elif issubclass(cls, BaseModel):
        if cls.model_config.get("frozen"):
            fields = cls.model_fields.values()
            extra = cls.model_config.get("extra") == "allow"
            fixed_fields = all(_fixed_annotation(f.annotation) for f in fields)
            kind = _SHARE if fixed_fields and not extra else _LOOK
    elif dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        kind = _LOOK
    _KINDS[cls] = kind
    return kind


def _holds_mutable(value: Any) -> bool:
    """Whether an immutable container (a tuple, a frozen model) holds a mutable value."""
    if isinstance(value, tuple | frozenset):
        inner: Any = value
    elif isinstance(value, BaseModel):
        inner = [*value.__dict__.values(), *(value.__pydantic_extra__ or {}).values()]
    else:
        inner = [getattr(value, f.name) for f in dataclasses.fields(value)]
    return any(own(v) is not v for v in inner)


def own(record: Any) -> Any:
    """Return ``record`` if it is immutable, else a deep copy of it."""
    kind = _KINDS.get(record.__class__)
    if kind is None:
        kind = _kind(record.__class__)
    if kind == _SHARE:
        return record
    if kind == _LOOK and not _holds_mutable(record):
        return record
    return copy.deepcopy(record)


def owned(records: Iterable[Any]) -> list[Any]:
    """Return a list of ``records`` that a further reader may change at will.

    >>> rows = [{"n": 1}, "a"]
    >>> mine = owned(rows)
    >>> mine[0] is rows[0], mine[1] is rows[1]
    (False, True)
    """
    records = list(records)  # a new list: each reader's list is its own too
    if all_fixed(records):
        return records
    kinds = _KINDS
    return [r if kinds.get(r.__class__) == _SHARE else own(r) for r in records]


def all_fixed(records: list[Any]) -> bool:
    """Whether every one of ``records`` is immutable by its type (the common case, quick).

    False may also mean a type not seen before: `owned` looks at it then.

    >>> all_fixed(["a", 1]), all_fixed(["a", {"n": 1}])
    (True, False)
    """
    kinds = _KINDS
    return all(kinds.get(cls) == _SHARE for cls in set(map(type, records)))
