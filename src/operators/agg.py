"""Aggregators: what `aggregate` computes per key and window.

Every aggregator follows one protocol, which a user's own aggregator follows
too (subclass `Aggregator`):

- ``create()`` returns an empty accumulator;
- ``add(acc, value, ts, event)`` returns the accumulator with one more value
  (``value`` is ``value_of(event)``: the field, a dict record's key of that
  name, or the event itself);
- ``merge(a, b)`` returns the accumulator of both (exact for every built-in,
  within the documented error for `quantile`), so partial aggregates made
  apart (per worker, per batch) combine into the same result;
- ``result(acc)`` returns the value put in the result record.

An event is aggregated all or nothing: when one aggregator cannot take it,
none does. An aggregator whose ``add`` changes ``acc`` itself (appends to a
list, adds to a set) says so with ``in_place = True`` and gives
``admit(value)``, which returns the value to add and raises where ``add``
would; every aggregator has then taken the event's values before any
accumulator changes. Its ``merge`` may change ``a`` in place too, and must
not fail: merges are all or nothing as well, the others' (which may fail,
a ``max`` of a string and a number) are computed first.

An aggregator with ``slices = True`` (or whose ``slices_for`` says so for the
events' classes: ``max`` and ``min`` of a field declared int, float or str)
promises more: its ``add`` fails for the value alone, never for what the
accumulator holds, its result does not depend on the order of the values,
and ``result`` leaves the accumulator as it was. A sliding window then adds
each event once, to the slice of time it is in, and merges the slices of a
window when it closes, instead of adding the event to each of its windows.

>>> a = mean("amount")
>>> acc = a.create()
>>> for v in (1.0, 2.0, 6.0):
...     acc = a.add(acc, v, 0.0, None)
>>> a.result(acc), a.result(a.merge(acc, a.add(a.create(), 7.0, 0.0, None)))
(3.0, 4.0)
"""

from __future__ import annotations

import math
import operator
import re
import types
import typing
from collections import Counter
from decimal import Decimal
from functools import cmp_to_key
from itertools import groupby
from typing import Any, NoReturn

from operators._event import Event, given_id, never_carried

__all__ = [
    "Aggregator",
    "collect",
    "count",
    "count_distinct",
    "first",
    "last",
    "max",
    "mean",
    "min",
    "quantile",
    "sum",
    "top_k",
]

_NUMERIC = (int, float, Decimal)
#: Types whose equal values show alike: a tie between two of them is a tie.
_PLAIN = frozenset({int, str, bool, bytes, type(None)})


def _is_numeric(annotation: Any) -> bool:
    """Whether a field of this type holds numbers: numeric types, which may be None.

    A None value of an optional field becomes a dead letter of the aggregate.

    >>> _is_numeric(int), _is_numeric(float | None), _is_numeric(typing.Optional[Decimal])
    (True, True, True)
    >>> _is_numeric(int | float | Decimal), _is_numeric(bool), _is_numeric(str | None)
    (True, False, False)
    >>> _is_numeric(int | str)
    False
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(kinds) and all(_is_numeric(kind) for kind in kinds)
    return (
        isinstance(annotation, type)
        and issubclass(annotation, _NUMERIC)
        and (annotation is not bool)
    )


def kinds_of(annotation: Any) -> list[type] | None:
    """Return the classes a type is made of (a union's parts but None); None: any at all.

    >>> kinds_of(int | None), kinds_of(list[tuple[Any, int]]), kinds_of(Any)
    ([<class 'int'>], [<class 'list'>], None)
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found: list[type] = []
        for part in typing.get_args(annotation):
            if part is not type(None):
                kinds = kinds_of(part)
                if kinds is None:
                    return None
                found += kinds
        return found
    if origin is typing.Annotated:
        return kinds_of(typing.get_args(annotation)[0])
    if isinstance(origin, type):
        return [origin]
    if isinstance(annotation, type) and annotation not in (object, Any):
        return [annotation]
    return None  # Any, a type variable, a Literal: not told apart here


def _allows(annotation: Any, need: str) -> bool:
    """Whether some value of a field of this type can be hashed (``need="hash"``) or ordered.

    Only what the type tells for sure is refused: a field of a class (or a union
    of classes) none of which allows it. Any, a Literal, and the abstract types
    of `collections.abc` and `typing` are not judged.

    >>> _allows(list[str], "hash"), _allows(tuple[str, ...] | None, "hash"), _allows(Any, "hash")
    (False, True, True)
    >>> _allows(dict[str, int], "order"), _allows(str | dict[str, int], "order")
    (False, True)
    """
    kinds = kinds_of(annotation)
    if not kinds:
        return True
    for kind in kinds:
        if kind.__module__ in ("collections.abc", "typing", "abc"):
            return True
        if need == "hash" and getattr(kind, "__hash__", None) is not None:
            return True
        if (
            need == "order"
            and getattr(kind, "__lt__", None) is not vars(object)["__lt__"]
            and not issubclass(kind, dict | complex)  # a `__lt__` that answers no order
        ):
            return True
    return False


#: What an aggregator whose values must be hashed or ordered says of a field that cannot be.
_NEEDS = {
    "hash": (
        "counts equal values, so it needs values a set can hold",
        "no set can hold (they are not hashable)",
        "map the field to one that is first (a tuple for a list, a frozenset for a set, a "
        "model with frozen=True), or count another field",
    ),
    "order": (
        "compares values",
        "have no order",
        "aggregate a field that has one (a number, a str, a datetime): keep one in the "
        "event, or map the events to a model with it first",
    ),
}


def _number_kinds(annotation: Any) -> set[type] | None:
    """Return the kinds of number (int, float, Decimal) a field of this type holds; None: others.

    Any (a field not known: dicts, or classes that differ) may hold each kind.

    >>> sorted(k.__name__ for k in _number_kinds(int | None)), _number_kinds(str)
    (['int'], None)
    >>> sorted(k.__name__ for k in _number_kinds(Any))
    ['Decimal', 'float', 'int']
    """
    if annotation is Any:
        return set(_NUMERIC)
    found: set[type] = set()
    for cls in kinds_of(annotation) or ():
        kind = next((k for k in _NUMERIC if issubclass(cls, k)), None)  # bool is an int
        if kind is None:
            return None
        found.add(kind)
    return found or None


def _union(kinds: list[type]) -> Any:
    """Return one type, or the union of several (in the order given)."""
    made: Any = kinds[0]
    for kind in kinds[1:]:
        made = made | kind
    return made


class Aggregator:
    """The base of every aggregator (see the module docstring for the protocol)."""

    #: The event field read, or None for the whole event.
    field: str | None = None
    #: Whether the field must be numeric.
    numeric = False
    #: What the field's values must allow: ``"hash"`` (a set or a dict holds
    #: them), ``"order"`` (they are compared), or None.
    needs: str | None = None
    #: The Python type of ``result`` (used for the typed result record).
    result_type: Any = Any
    #: Whether ``add`` changes the accumulator itself (see `admit`).
    in_place = False
    #: Whether the ``inline`` expression may raise a `TypeError` where ``add``
    #: would not (it compares values that may be of two types): generated code
    #: then calls ``add`` for such an event.
    inline_guarded = False
    #: Whether a window's accumulator can be merged from slices of it (see
    #: the module docstring): ``add`` fails for the value alone, the result
    #: does not depend on the order of the values, nor change the accumulator.
    slices = False

    @property
    def label(self) -> str:
        """A short description (``sum(amount)``)."""
        return f"{type(self).__name__.lower().lstrip('_')}({self.field or ''})"

    def value_of(self, event: Any) -> Any:
        """Return what this aggregator reads from an event (a dict: the field's key)."""
        if self.field is None:
            return event
        if event.__class__ is dict:
            return event[self.field]
        return self._get(event)

    def _get(self, event: Any) -> Any:
        getter = self.__dict__.get("_getter")
        if getter is None:
            getter = operator.attrgetter(self.field or "")
            self.__dict__["_getter"] = getter
        return getter(event)

    def create(self) -> Any:
        """Return an empty accumulator."""
        raise NotImplementedError

    def add(self, acc: Any, value: Any, ts: float, event: Any) -> Any:
        """Return ``acc`` with one more value."""
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        """Return the accumulator of both."""
        raise NotImplementedError

    def admit(self, value: Any) -> Any:
        """Return the value ``add`` is to take; raise where ``add`` would (``in_place`` only).

        Called before any accumulator changes, so that an event that one
        aggregator cannot take changes none.
        """
        return value

    def result(self, acc: Any) -> Any:
        """Return the final value."""
        return acc

    def inline(self, acc: str, value: str) -> str | None:
        """Return a Python expression for ``add`` (for generated code), or None."""
        return None

    def inline_merge(self, a: str, b: str) -> str | None:
        """Return a Python expression for ``merge`` (for generated code), or None."""
        return None

    def inline_result(self, acc: str) -> str | None:
        """Return a Python expression for ``result`` (for generated code), or None."""
        return None

    def slices_for(self, classes: tuple[type[Event], ...] | None) -> bool:
        """Whether it slices (`slices`) for events of ``classes`` (None: not known)."""
        return self.slices

    def typed(self, classes: tuple[type[Event], ...] | None) -> Any:
        """Return the type of ``result`` for events of ``classes`` (None: not known).

        ``result_type``, unless the field's own type says more (see `field_type`).
        """
        return self.result_type

    def check(self, classes: tuple[type[Event], ...], step: str) -> None:
        """Check the field against the event classes; raise with their fields."""
        if self.field is None:
            return
        for cls in classes:
            fields = cls.model_fields
            if self.field not in fields:
                msg = (
                    f"step {step!r} (aggregate): {self.label} reads field "
                    f"{self.field!r}, which {cls.__name__} does not have; its fields are "
                    f"{sorted(fields)}. Hint: filter to the class that has it first."
                )
                raise ValueError(msg)
            annotation = fields[self.field].annotation
            if self.numeric and not _is_numeric(annotation):
                numeric = sorted(f for f, info in fields.items() if _is_numeric(info.annotation))
                msg = (
                    f"step {step!r} (aggregate): {self.label} needs a numeric field, but "
                    f"{cls.__name__}.{self.field} is {_type_name(annotation)}; the numeric "
                    f"fields of {cls.__name__} are {numeric}."
                )
                raise TypeError(msg)
            if self.needs is not None and not _allows(annotation, self.needs):
                does, cannot, hint = _NEEDS[self.needs]
                msg = (
                    f"step {step!r} (aggregate): {self.label} {does}, but "
                    f"{cls.__name__}.{self.field} is {_shown_type(annotation)}, whose values "
                    f"{cannot}: every event would be a dead letter. Hint: {hint}."
                )
                raise TypeError(msg)


def field_type(field: str | None, classes: tuple[type[Event], ...] | None) -> Any:
    """Return the type every class in ``classes`` declares ``field`` as, or Any.

    What a ``max``, ``min``, ``first`` or ``last`` of the field gives: so a
    window over their results can sum or average them.

    >>> class Bid(Event):
    ...     price: int
    >>> field_type("price", (Bid,)), field_type("price", None), field_type(None, (Bid,))
    (<class 'int'>, typing.Any, typing.Any)
    """
    if field is None or not classes:
        return Any
    found = {
        cls.model_fields[field].annotation if field in cls.model_fields else None for cls in classes
    }
    if len(found) != 1:
        return Any
    (annotation,) = found
    return Any if annotation is None else annotation


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _shown_type(annotation: Any) -> str:
    """Show a type as written, without modules.

    >>> _shown_type(list[str]), _shown_type(Decimal | None), _shown_type(Decimal)
    ('list[str]', 'Decimal | None', 'Decimal')
    """
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return _type_name(annotation)  # (on Python 3.10, list[str] is a type too)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(annotation))


class _Count(Aggregator):
    result_type = int
    slices = True

    def __init__(self, cls: type | None) -> None:
        self.cls = cls

    @property
    def label(self) -> str:
        return f"count({self.cls.__name__ if self.cls else ''})"

    def check(self, classes: tuple[type[Event], ...], step: str) -> None:
        """Refuse a class that none of the stream's classes is (its count would stay 0)."""
        cls = self.cls
        known = None if cls is None else never_carried(classes, cls)
        if cls is not None and known is not None:
            msg = (
                f"step {step!r} (aggregate): {self.label} counts {cls.__name__} events, but the "
                f"stream carries {known}, never {cls.__name__}: it would be 0 in every result. "
                f"Hint: count one of {known}, or add {cls.__name__} to the source schema."
            )
            raise TypeError(msg)

    def create(self) -> int:
        return 0

    def add(self, acc: int, value: Any, ts: float, event: Any) -> int:
        if self.cls is None or isinstance(event, self.cls):
            return acc + 1
        return acc

    def merge(self, a: int, b: int) -> int:
        return a + b

    def inline(self, acc: str, value: str) -> str | None:
        return f"{acc} + 1" if self.cls is None else None

    def inline_result(self, acc: str) -> str | None:
        return acc

    def inline_merge(self, a: str, b: str) -> str | None:
        return f"{a} + {b}"


def count(cls: type | None = None) -> Aggregator:
    """Count events (only those of event class ``cls`` when given)."""
    if cls is not None and not isinstance(cls, type):
        msg = f"count(cls): cls must be an event class; got {cls!r}."
        raise TypeError(msg)
    return _Count(cls)


#: An exact sum: ``(the sum of values that are not floats, m, e)``; the floats
#: sum to exactly ``m / 2**e`` (``e`` is -1 while no float was added).
ExactSum = tuple[Any, int, int]

#: The exact sum of nothing.
EXACT_ZERO: ExactSum = (0, 0, -1)


def exact_add(acc: ExactSum, value: Any) -> ExactSum:
    """Add ``value`` to an exact sum: a float adds its exact binary value.

    Floats are summed without rounding and rounded once, by `exact_total`, so
    the sum does not depend on the order of the values (nor on how partial
    sums were grouped): ``0.1 + 0.2 + 0.3`` and ``0.3 + 0.2 + 0.1`` agree.

    >>> up = exact_add(exact_add(exact_add(EXACT_ZERO, 0.1), 0.2), 0.3)
    >>> down = exact_add(exact_add(exact_add(EXACT_ZERO, 0.3), 0.2), 0.1)
    >>> exact_total(up) == exact_total(down) == 0.6, (0.1 + 0.2) + 0.3 == 0.6
    (True, False)
    """
    if value.__class__ is not float:
        return (acc[0] + value, acc[1], acc[2])
    n, d = value.as_integer_ratio()  # value == n / 2**k
    k = d.bit_length() - 1
    other, m, e = acc
    if k > e:
        return (other, (m << (k - e) if e >= 0 else 0) + n, k)
    return (other, m + (n << (e - k)), e)


def exact_merge(a: ExactSum, b: ExactSum) -> ExactSum:
    """Return the exact sum of both exact sums."""
    if b[2] < 0:
        return (a[0] + b[0], a[1], a[2])
    if a[2] < 0:
        return (a[0] + b[0], b[1], b[2])
    e = a[2] if a[2] > b[2] else b[2]
    return (a[0] + b[0], (a[1] << (e - a[2])) + (b[1] << (e - b[2])), e)


def exact_total(acc: ExactSum, divisor: int | None = None) -> Any:
    """Return the exact sum, or it divided by ``divisor`` (a mean), rounded once.

    A sum is of the kind of number added (a float once a float was); a mean
    is a float (a Decimal for Decimals), a mean of one int too:

    >>> exact_total(exact_add(EXACT_ZERO, 3)), exact_total(exact_add(EXACT_ZERO, 3), 1)
    (3, 3.0)
    """
    other, m, e = acc
    if e < 0:
        return other if divisor is None else other / divisor
    if divisor is None:
        divisor = 1
    if other.__class__ is int:
        return (m + (other << e)) / ((1 << e) * divisor)  # int / int: rounded once
    return (other + m / (1 << e)) / divisor


class _Sum(Aggregator):
    """Sums floats exactly (rounded once at the end), so the order of events does not matter."""

    numeric = True
    result_type = float
    slices = True

    def __init__(self, field: str) -> None:
        self.field = _field(field, "sum")

    def create(self) -> ExactSum:
        return EXACT_ZERO

    def add(self, acc: ExactSum, value: Any, ts: float, event: Any) -> ExactSum:
        return exact_add(acc, value)

    def merge(self, a: ExactSum, b: ExactSum) -> ExactSum:
        return exact_merge(a, b)

    def result(self, acc: ExactSum) -> Any:
        return exact_total(acc)

    def typed(self, classes: tuple[type[Event], ...] | None) -> Any:
        """Return the type of the sum: that of the values summed, kept exact.

        A sum of ints is an int (of bools: how many are true), of Decimals a
        Decimal, and a float once a float is among the values; of a field not
        known (dicts), whichever the values make.

        >>> class Line(Event):
        ...     qty: int
        ...     price: Decimal
        ...     weight: float | int
        >>> sum("qty").typed((Line,)), sum("price").typed((Line,))
        (<class 'int'>, <class 'decimal.Decimal'>)
        >>> sum("weight").typed((Line,)), sum("qty").typed(None)
        (int | float, int | float | decimal.Decimal)
        """
        kinds = _number_kinds(field_type(self.field, classes))
        if kinds is None:
            return Any
        return _union([kind for kind in _NUMERIC if kind in kinds])

    def inline(self, acc: str, value: str) -> str | None:
        return f"exact_add({acc}, {value})"

    def inline_merge(self, a: str, b: str) -> str | None:
        return f"exact_merge({a}, {b})"

    def inline_result(self, acc: str) -> str | None:
        return f"exact_total({acc})"


def _field(field: Any, what: str) -> str:
    if not isinstance(field, str) or not field.isidentifier():
        msg = f"{what}(field): field must be a field name; got {field!r}. Hint: {what}('amount')."
        raise TypeError(msg)
    return field


def sum(field: str) -> Aggregator:
    """Sum a numeric field."""
    return _Sum(field)


class _Mean(Aggregator):
    """The exact sum (see `exact_add`) over the count, rounded once."""

    numeric = True
    #: A float: a result is made for a window (or key) that has taken an event.
    result_type = float
    slices = True

    def __init__(self, field: str) -> None:
        self.field = _field(field, "mean")

    def create(self) -> tuple[ExactSum, int]:
        return (EXACT_ZERO, 0)

    def add(
        self, acc: tuple[ExactSum, int], value: Any, ts: float, event: Any
    ) -> tuple[ExactSum, int]:
        return (exact_add(acc[0], value), acc[1] + 1)

    def merge(self, a: tuple[ExactSum, int], b: tuple[ExactSum, int]) -> tuple[ExactSum, int]:
        return (exact_merge(a[0], b[0]), a[1] + b[1])

    def result(self, acc: tuple[ExactSum, int]) -> float | None:
        return exact_total(acc[0], acc[1]) if acc[1] else None

    def typed(self, classes: tuple[type[Event], ...] | None) -> Any:
        """Return the type of the mean: a float, or a Decimal for Decimals (kept exact).

        >>> class Line(Event):
        ...     qty: int
        ...     price: Decimal
        >>> mean("qty").typed((Line,)), mean("price").typed((Line,)), mean("qty").typed(None)
        (<class 'float'>, <class 'decimal.Decimal'>, float | decimal.Decimal)
        """
        kinds = _number_kinds(field_type(self.field, classes))
        if kinds is None:
            return Any
        if kinds == {Decimal}:
            return Decimal
        return _union([float, Decimal] if Decimal in kinds else [float])


def mean(field: str) -> Aggregator:
    """Arithmetic mean of a numeric field (None for no values)."""
    return _Mean(field)


def unordered(value: Any, label: str) -> NoReturn:
    """Refuse a value ``label`` (a max or min) cannot order: nan, None.

    Taken in one place and passed over in another, it would make the result
    depend on the order the events came in.

    >>> unordered(float("nan"), "max(price)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: max(price) cannot take nan: it is neither above nor below any value, so ...
    """
    shown = "None (the event has no value for it)" if value is None else repr(value)
    msg = (
        f"{label} cannot take {shown}: it is neither above nor below any value, so the result "
        f"would depend on the order of the events. Hint: filter such events out before the "
        f"aggregate, or map the value to a number."
    )
    raise ValueError(msg)


def pick(value: Any, acc: Any, largest: bool, label: str) -> Any:
    """Return which of ``value`` and ``acc`` a max (``largest``) or min keeps.

    Values of two types that do not compare (a number and a text) are placed
    as `_order` places them (by type name), so the result is the same
    whatever order they come in; nan and None, and a value with no order even
    with itself (a dict), are refused.

    >>> pick(3, 2, True, "max(x)"), pick(3, 2, False, "min(x)")
    (3, 2)
    >>> pick("a", 1, True, "max(x)"), pick(1, "a", True, "max(x)"), pick("a", 1, False, "min(x)")
    ('a', 'a', 1)
    """
    if value is None or value != value:  # (nan)
        unordered(value, label)
    try:
        above, below = value > acc, value < acc
    except TypeError:  # no order between the two types
        try:
            value < value  # noqa: B015 - raises for a value with no order at all
        except TypeError:
            unordered(value, label)
        return value if (_order(value, acc) > 0) == largest else acc
    if above or below:
        return value if (above if largest else below) else acc
    return level(value, acc, label)


def level(value: Any, acc: Any, label: str) -> Any:
    """Return which of two values neither above nor below the other a max or min keeps.

    Equal values of different types (``1`` and ``1.0``) are told apart by type name,
    so the result is the same whatever order they come in; a value that cannot
    be ordered (nan, None, or one neither equal to nor ordered with the other)
    is refused.

    >>> level(1, 1.0, "max(x)"), level(1.0, 1, "max(x)"), level(2, 2, "max(x)")
    (1.0, 1.0, 2)
    """
    if value is None or value != value or value != acc:  # nan, or no order between them
        unordered(value, label)
    return value if _order(value, acc) < 0 else acc


class _Extreme(Aggregator):
    """The largest (or smallest) value; a value that cannot be ordered (nan, None) is refused.

    Of equal values of different types (``1``, ``1.0``), the one whose type name is
    first: the same whatever order the events come in.
    """

    inline_guarded = True
    needs = "order"

    def __init__(self, field: str, largest: bool) -> None:
        self.field = _field(field, "max" if largest else "min")
        self.largest = largest

    @property
    def label(self) -> str:
        return f"{'max' if self.largest else 'min'}({self.field})"

    def typed(self, classes: tuple[type[Event], ...] | None) -> Any:
        return field_type(self.field, classes)

    def slices_for(self, classes: tuple[type[Event], ...] | None) -> bool:
        """Whether every value is of one ordered kind, so no add fails on what a window holds.

        So where every class declares the field an int, a float or a str: a
        ``max`` of values that no order holds (a set after a set neither of
        which holds the other) could fail in one window and not in another
        (see `slices`).

        >>> class Bid(Event):
        ...     price: float
        ...     note: Any = None
        >>> max("price").slices_for((Bid,)), max("note").slices_for((Bid,))
        (True, False)
        >>> max("price").slices_for(None)  # events of classes not known
        False
        """
        return field_type(self.field, classes) in (int, float, str)

    def create(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, ts: float, event: Any) -> Any:
        if acc is None:
            if value is None or value != value or value < value:  # (nan; a value with no order)
                unordered(value, self.label)
            return value
        return pick(value, acc, self.largest, self.label)

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return b if a is None else a
        return self.add(a, b, 0.0, None)

    def inline(self, acc: str, value: str) -> str | None:
        # `add`, as one expression: the value is read once, then compared; one
        # that is not above (below) the accumulator is checked for nan and None.
        tag = "".join(c if c.isalnum() else "_" for c in acc)
        v, a = f"_v{tag}", f"_a{tag}"
        op, other = (">", "<") if self.largest else ("<", ">")
        bad = f"unordered({v}, {self.label!r})"
        tie = f"level({v}, {a}, {self.label!r})"  # nan, None and equal values: see `level`
        # Values of two types that do not compare raise here: `add` places them
        # (`inline_guarded`).
        keep = f"({v} if ({v} := {value}) {op} {a} else ({a} if {v} {other} {a} else {tie}))"
        first = f"({v} if ({v} := {value}) == {v} and not ({v} is None or {v} < {v}) else {bad})"
        return f"({first} if ({a} := {acc}) is None else {keep})"


def min(field: str) -> Aggregator:
    """Smallest value of a field (None for no values)."""
    return _Extreme(field, largest=False)


def max(field: str) -> Aggregator:
    """Largest value of a field (None for no values)."""
    return _Extreme(field, largest=True)


def _order(a: Any, b: Any) -> int:
    """Return -1, 0 or 1 as ``a`` is before, level with or after ``b``.

    By value; values that do not compare (a number and a text) by type name,
    then by their text.

    Equal values of different types (``1`` and ``1.0``) go by type name, and
    equal values of one type that show apart (``Decimal("1")`` and
    ``Decimal("1.0")``, ``0.0`` and ``-0.0``) by their text, so that values
    are placed alike whatever order they come in.

    >>> _order(2, 10), _order("b", "a"), _order(1, "a"), _order({"n": 1}, {"n": 1})
    (-1, 1, -1, 0)
    >>> _order(1, 1.0), _order(1.0, 1), _order(Decimal("1.0"), Decimal("1")), _order(-0.0, 0.0)
    (1, -1, 1, -1)
    """
    try:
        found = int(a > b) - int(a < b)
        if found:
            return found
        if a.__class__ is b.__class__ and bool(a == b):
            if a.__class__ in _PLAIN:
                return 0
            ra, rb = repr(a), repr(b)
            return int(ra > rb) - int(ra < rb)
    except Exception:  # noqa: BLE001 - values that do not compare (or compare to an array)
        pass
    ka, kb = (type(a).__name__, repr(a)), (type(b).__name__, repr(b))
    return int(ka > kb) - int(ka < kb)


class _Edge(Aggregator):
    """The value of the earliest (or latest) event by time; ties by event id, then by value.

    So the result is the same whatever order events of one time arrive in (several
    partitions, workers, batch sizes): of those without ids, ``first`` takes the
    least value and ``last`` the greatest.
    """

    slices = True

    def __init__(self, field: str | None, latest: bool) -> None:
        self.field = None if field is None else _field(field, "last" if latest else "first")
        self.latest = latest

    @property
    def label(self) -> str:
        return f"{'last' if self.latest else 'first'}({self.field or ''})"

    def typed(self, classes: tuple[type[Event], ...] | None) -> Any:
        return field_type(self.field, classes)

    def create(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, ts: float, event: Any) -> Any:
        return self.merge(acc, (ts, given_id(event) or "", value))

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return b if a is None else a
        ka, kb = (a[0], a[1]), (b[0], b[1])
        if ka != kb:
            pick_b = kb > ka if self.latest else kb < ka
        else:  # the same time and id (or none): by value
            order = _order(b[2], a[2])
            pick_b = order > 0 if self.latest else order < 0
        return b if pick_b else a

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[2]


def first(field: str | None = None) -> Aggregator:
    """Take the field (or event) of the earliest event by time."""
    return _Edge(field, latest=False)


def last(field: str | None = None) -> Aggregator:
    """Take the field (or event) of the latest event by time."""
    return _Edge(field, latest=True)


class _Distinct(Aggregator):
    result_type = int
    needs = "hash"
    in_place = True
    slices = True

    def __init__(self, field: str) -> None:
        self.field = _field(field, "count_distinct")

    def create(self) -> set[Any]:
        return set()

    def admit(self, value: Any) -> Any:
        hash(value)  # a value a set cannot hold fails here, before anything changed
        return value

    def add(self, acc: set[Any], value: Any, ts: float, event: Any) -> set[Any]:
        acc.add(value)
        return acc

    def merge(self, a: set[Any], b: set[Any]) -> set[Any]:
        return a | b

    def result(self, acc: set[Any]) -> int:
        return len(acc)


def count_distinct(field: str) -> Aggregator:
    """Exact number of distinct values of a field."""
    return _Distinct(field)


class _TopK(Aggregator):
    result_type = list[tuple[Any, int]]
    needs = "hash"
    in_place = True
    slices = True

    def __init__(self, field: str, k: int) -> None:
        self.field = _field(field, "top_k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            msg = f"top_k: k must be a positive int; got {k!r}."
            raise ValueError(msg)
        self.k = k

    @property
    def label(self) -> str:
        return f"top_k({self.field}, {self.k})"

    def create(self) -> dict[Any, list[Any]]:
        return {}

    def admit(self, value: Any) -> Any:
        hash(value)  # a value a dict cannot hold fails here, before anything changed
        return value

    def add(self, acc: dict[Any, list[Any]], value: Any, ts: float, event: Any) -> Any:
        """Count ``value``: ``acc`` maps each value to ``[the value shown, its count]``.

        Equal values (``1`` and ``1.0``, ``Decimal("1")`` and ``Decimal("1.0")``)
        are one value, shown as the one `_order` puts first, whatever order
        they came in.
        """
        slot = acc.get(value)
        if slot is None:
            acc[value] = [value, 1]
        elif slot.__class__ is list:
            slot[1] += 1
            _show_first(slot, value)
        else:  # a Counter an earlier evflow saved in a snapshot
            return self.add(_slots(acc), value, ts, event)
        return acc

    def merge(self, a: dict[Any, list[Any]], b: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        merged = {value: [*slot] for value, slot in _slots(a).items()}
        for value, (shown, n) in _slots(b).items():
            slot = merged.get(value)
            if slot is None:
                merged[value] = [shown, n]
                continue
            slot[1] += n
            _show_first(slot, shown)
        return merged

    def result(self, acc: dict[Any, list[Any]]) -> list[tuple[Any, int]]:
        items = [(shown, n) for shown, n in _slots(acc).values()]
        try:  # ties in the values' own order (2 before 10)
            ranked = sorted(items, key=lambda kv: (-kv[1], kv[0]))
        except TypeError:  # values that do not compare (1 and "a"): as `_order` places them
            by_value = cmp_to_key(_order)
            ranked = sorted(items, key=lambda kv: (-kv[1], by_value(kv[0])))
        return ranked[: self.k]


def _show_first(slot: list[Any], value: Any) -> None:
    """Show ``value`` in a top_k slot ``[shown, count]`` if `_order` puts it first."""
    shown = slot[0]
    if shown is not value and _may_show_apart(value, shown) and _order(value, shown) < 0:
        slot[0] = value


def _may_show_apart(value: Any, shown: Any) -> bool:
    """Whether two equal values may show apart (see `_order`): not two ints, texts, floats but 0.

    A quick test, so that counting a value again costs no `_order` in the common case.

    >>> _may_show_apart(1, 1), _may_show_apart(2.5, 2.5), _may_show_apart(1, 1.0)
    (False, False, True)
    >>> _may_show_apart(0.0, -0.0), _may_show_apart(Decimal("1"), Decimal("1.0"))
    (True, True)
    """
    cls = value.__class__
    if cls is not shown.__class__:
        return True
    return cls not in _PLAIN and not (cls is float and value)


def _slots(acc: Any) -> dict[Any, list[Any]]:
    """Return a top_k accumulator as value -> ``[shown, count]`` (an earlier one was a Counter)."""
    if acc.__class__ is Counter:
        return {value: [value, n] for value, n in acc.items()}
    return acc  # type: ignore[no-any-return]


def top_k(field: str, k: int = 10) -> Aggregator:
    """Find the ``k`` most frequent values of a field, with counts (exact).

    Ties are in the values' order; values that do not compare (numbers and
    text together) by type name, then text; equal values of two types (``1``
    and ``1.0``) are one value, shown as the type named first: the same on
    every run, whatever order the events come in.

    >>> def fold(a, values):
    ...     acc = a.create()
    ...     for v in values:
    ...         acc = a.add(acc, v, 0.0, None)
    ...     return a.result(acc)
    >>> fold(top_k("n", 2), [10, 2, 2, 10, 1])
    [(2, 2), (10, 2)]
    >>> fold(top_k("n", 3), ["a", 1, 1.5])
    [(1, 1), (1.5, 1), ('a', 1)]
    >>> fold(top_k("n", 2), [1, 2, 1.0]), fold(top_k("n", 2), [1.0, 2, 1])
    ([(1.0, 2), (2, 1)], [(1.0, 2), (2, 1)])
    """
    return _TopK(field, k)


class _Quantile(Aggregator):
    numeric = True
    #: A float: a result is made for a window (or key) that has taken an event.
    result_type = float
    in_place = True
    slices = True

    def __init__(self, field: str, q: float, relative_accuracy: float) -> None:
        self.field = _field(field, "quantile")
        if not 0 <= q <= 1:
            msg = f"quantile: q must be between 0 and 1; got {q!r}. Hint: quantile('ms', 0.95)."
            raise ValueError(msg)
        if not 0 < relative_accuracy < 1:
            msg = f"quantile: relative_accuracy must be in (0, 1); got {relative_accuracy!r}."
            raise ValueError(msg)
        self.q = q
        self.relative_accuracy = relative_accuracy

    @property
    def label(self) -> str:
        return f"quantile({self.field}, {self.q:g})"

    def create(self) -> Any:
        from ddsketch import DDSketch

        return DDSketch(relative_accuracy=self.relative_accuracy)

    def admit(self, value: Any) -> float:
        if isinstance(value, str | bytes | bytearray):  # float("5") would take text as a number
            msg = (
                f"{self.label} takes numbers; got {type(value).__name__} {value!r:.40} (sum and "
                f"mean refuse it too). Hint: map the field to a number before the aggregate."
            )
            raise TypeError(msg)
        number = float(value)
        if not math.isfinite(number):  # (the sketch counted nan as a zero)
            msg = f"{self.label} cannot place nan or an infinite value in its sketch: {value!r}."
            raise ValueError(msg)
        return number

    def add(self, acc: Any, value: Any, ts: float, event: Any) -> Any:
        acc.add(float(value))
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        a.merge(b)
        return a

    def result(self, acc: Any) -> float | None:
        if acc.count == 0:
            return None
        value = acc.get_quantile_value(self.q)
        return None if value is None else float(value)


def quantile(field: str, q: float, *, relative_accuracy: float = 0.01) -> Aggregator:
    """Estimate the ``q`` quantile of a numeric field with a mergeable DDSketch.

    Accuracy: for positive values the result ``x`` is within
    ``relative_accuracy`` (1% by default) of a true ``q`` quantile ``v`` of the
    values seen: ``|x - v| <= relative_accuracy * |v|``. Merging sketches
    keeps that guarantee.
    """
    return _Quantile(field, q, relative_accuracy)


class _Collect(Aggregator):
    result_type = list[Any]
    in_place = True

    def __init__(self, field: str | None) -> None:
        self.field = None if field is None else _field(field, "collect")

    def create(self) -> list[Any]:
        return []

    def add(self, acc: list[Any], value: Any, ts: float, event: Any) -> list[Any]:
        acc.append((ts, given_id(event) or "", value))
        return acc

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return a + b

    def result(self, acc: list[Any]) -> list[Any]:
        out: list[Any] = []
        # stable, and mostly in order already; of one time and id (or none): by value
        for _, group in groupby(sorted(acc, key=_time_and_id), key=_time_and_id):
            values = [h[2] for h in group]
            out += values if len(values) == 1 else sorted(values, key=cmp_to_key(_order))
        return out


def _time_and_id(held: tuple[float, str, Any]) -> tuple[float, str]:
    return held[0], held[1]


def collect(field: str | None = None) -> Aggregator:
    """Every value of a field (or every event), in event-time order.

    Values of one time go by event id, then by value: the list is the same
    whatever order the events arrive in (several partitions, batch sizes).

    >>> g = collect("n")
    >>> acc = g.create()
    >>> for n, ts in [(3, 2.0), (9, 1.0), (1, 2.0), (5, 0.5)]:
    ...     acc = g.add(acc, n, ts, None)
    >>> g.result(acc)
    [5, 9, 1, 3]
    """
    return _Collect(field)
