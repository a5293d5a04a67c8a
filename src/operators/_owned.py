"""Each reader's own record: copies of mutable records where one record would reach two readers.

A record a step hands to several readers (a stream read by two steps, a
record on several ``mode="all"`` routes, an event with several handlers) is
each reader's own, as a record read from a file or a broker is: a function
that changes its input in place (``e["seen"] = True``) changes nothing that
another branch, or a later run of the same pipeline, sees. Immutable records
(numbers, text, frozen events such as `Event`, tuples of these) are handed on
as they are, so the common case costs one dictionary lookup; a mutable one is
copied: a dict or list anew around each value's own (the frozen events in a
list stay shared), an object that is not frozen deep.

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
_LIST = 1  # a list, dict or set: a new one, holding each value's own (`own`)
_DICT = 2
_SET = 3
_TUPLE = 4  # a tuple (or named tuple): itself unless it holds a mutable value
_MODEL = 5  # a frozen pydantic model: itself, or a copy with its mutable fields' own
_LOOK = 6  # another immutable container: itself unless it holds a mutable value
_COPY = 7  # mutable: a deep copy

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
    elif cls in (list, dict, set):
        kind = {list: _LIST, dict: _DICT, set: _SET}[cls]
    elif cls is tuple or (issubclass(cls, tuple) and hasattr(cls, "_make")):
        kind = _TUPLE
    elif issubclass(cls, frozenset):
        kind = _LOOK
    elif issubclass(cls, BaseModel):
        if cls.model_config.get("frozen"):
            _KINDS[cls] = _MODEL  # meanwhile: a field of its own class is looked at
            fields = cls.model_fields.values()
            if cls.model_config.get("extra") == "allow":
                kind = _LOOK
            elif all(_fixed_annotation(f.annotation) for f in fields):
                kind = _SHARE
            else:
                kind = _MODEL
    elif dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        kind = _LOOK
    _KINDS[cls] = kind
    return kind


def _inner(value: Any) -> list[Any]:
    """Return the values an immutable container of kind `_LOOK` holds."""
    if isinstance(value, frozenset):
        return list(value)
    if isinstance(value, BaseModel):
        return [*value.__dict__.values(), *(value.__pydantic_extra__ or {}).values()]
    return [getattr(value, f.name) for f in dataclasses.fields(value)]


def _own(record: Any) -> Any:
    kind = _KINDS.get(record.__class__)
    if kind is None:
        kind = _kind(record.__class__)
    if kind == _SHARE:
        return record
    if kind == _LIST:
        return owned(record)
    if kind == _DICT:
        return {k: _own(v) for k, v in record.items()}
    if kind == _SET:
        return set(record)  # what a set holds is hashable: taken as immutable
    if kind == _TUPLE:
        if _shares_all(record):
            return record  # the common case: a tuple of numbers and text
        items = [_own(v) for v in record]
        if all(a is b for a, b in zip(items, record, strict=True)):
            return record
        return tuple(items) if record.__class__ is tuple else record._make(items)
    if kind == _MODEL:
        changed = {}
        for name, value in record.__dict__.items():
            mine = _own(value)
            if mine is not value:
                changed[name] = mine
        # pydantic's own copy: values already valid, only copied (`Event.model_copy` validates).
        return BaseModel.model_copy(record, update=changed) if changed else record
    if kind == _LOOK and all(_own(v) is v for v in _inner(record)):
        return record
    return _deep(record)


def _shares_all(values: Any) -> bool:
    """Whether each of ``values`` is immutable by its type (a tuple of numbers and text)."""
    kinds = _KINDS
    for v in values:  # noqa: SIM110 - a loop: twice as quick as all() over a generator
        if kinds.get(v.__class__) != _SHARE:
            return False
    return True


def _deep(record: Any) -> Any:
    """Return a deep copy of ``record``, or ``record`` itself where none can be made.

    A record that holds a lock, a socket or an open file cannot be copied: it
    is handed on shared, as it is, rather than stopping the run.
    """
    try:
        return copy.deepcopy(record)
    except Exception:  # noqa: BLE001 - whatever its __deepcopy__ or __reduce__ raises
        return record


def own(record: Any) -> Any:
    """Return ``record`` if it is immutable, else a copy of it that shares nothing mutable.

    A list, dict or set is made anew around each value's own; a tuple or a
    frozen event is kept, or remade around copies of its mutable values (a
    frozen event's list field); anything else mutable is deep-copied.
    """
    kind = _KINDS.get(record.__class__)
    if kind == _SHARE or (kind == _TUPLE and _shares_all(record)):
        return record  # the common cases, before the `try`
    try:
        return _own(record)
    except RecursionError:  # a structure that holds itself
        return _deep(record)


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
