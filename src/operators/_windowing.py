"""Keyed windows and running aggregates over bytewax, with per-partition watermarks.

How a windowed aggregate runs:

1. Inside the upstream stage, `ClockOp` gives each event its key and time
   (a failure is dead-lettered): records become ``(key, ts, event)``.
2. `Bucketize` groups the records of a batch of one partition's chunks into a
   fixed number of key buckets and tags each group with the partition and its
   largest event time after each chunk; every bucket hears from every batch,
   so every bucket knows every partition's progress (the watermark markers).
   Before an event behind an earlier event of its batch (minus
   ``max_delay``) the bucket's share is cut, so the bucket moves the
   partition's watermark on there. So each event is judged against its
   partition's watermark as it stands just before it, whatever the batch size.
3. bytewax's ``stateful_batch`` routes buckets to workers; `WindowLogic`
   holds the windows of all keys of one bucket. A partition's watermark is
   its largest event time minus ``max_delay``; the minimum over the
   partitions that are not idle (a source says when it has nothing to read)
   closes windows. An event joins each of its windows whose end its
   partition's watermark has not reached, and is late only when it has
   reached all of them. Lateness depends only on the partition's own order,
   so results do not depend on how many workers read the partitions or how
   fast.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import operator
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal, TypeVar

import pydantic
from bytewax.operators import StatefulBatchLogic

from operators._deadletter import DeadLetter, payload_text
from operators._event import Event, record_part
from operators._keying import BUCKET_LAYOUT, Marked, check_layout, check_shape
from operators._letters import Making, Notes, _iso, dead_item
from operators._owned import own
from operators._pickles import check_state
from operators._policy import ErrorPolicy, PipelineHalted
from operators._stage import COUNTER_FIELDS, Counters
from operators.agg import Aggregator, exact_add, exact_merge, exact_total, level, unordered
from operators.windows import (
    _END,
    Clock,
    Count,
    EventTime,
    Session,
    Sliding,
    Tumbling,
    Window,
)

__all__ = ["Combiner", "WindowLogic", "WindowSpec", "can_combine", "make_adder", "make_merger"]

_IN, _OUT, _DEAD, _CREATED, _AGG, _OPEN, _LATE, _SKIPPED, _EARLY = (
    COUNTER_FIELDS.index(f)
    for f in ("in", "out", "dead", "created", "aggregated", "open", "late", "skipped", "early")
)
_NEVER = -math.inf
_DONE = math.inf
#: No window of that key and start (a paned window is held with None).
_MISSING: Any = object()


def _add_lines(
    aggs: Sequence[Aggregator], env: dict[str, Any], *, keys: bool = False, inline: bool = True
) -> tuple[list[str], list[str]]:
    """Return an add in two: what each aggregator takes (no change), then the lines storing it.

    Taking is an expression of the accumulators ``a`` and the event ``e``
    for each aggregator, in order: its new accumulator, or, for one that adds
    in place, the value it admits (named ``n{i}`` once taken). Storing
    changes the accumulators, and cannot fail once every value was taken.
    A field is an attribute of the event, or with ``keys`` a key of a dict.
    Without ``inline``, each aggregator's own ``add`` is called (see `_guarded`).
    """
    take, store = [], []
    env["unordered"] = unordered  # (the inline max and min refuse nan and None)
    env["level"] = level  # (and tell equal values of two types apart)
    for i, g in enumerate(aggs):
        env[f"g{i}"] = g
        value = f"e[{g.field!r}]" if keys else f"e.{g.field}"
        if g.field is None:
            value = "e"
        if g.in_place:
            take.append(f"g{i}.admit({value})")
            store.append(f"a[{i}] = g{i}.add(a[{i}], n{i}, ts, e)")
        else:
            inlined = g.inline(f"a[{i}]", value) if inline else None
            take.append(inlined or f"g{i}.add(a[{i}], {value}, ts, e)")
            store.append(f"a[{i}] = n{i}")
    return take, store


def make_adder(aggs: Sequence[Aggregator]) -> Callable[[list[Any], Any, float], None]:
    """Generate ``add(accs, event, ts)`` for these aggregators, all or nothing.

    Values are read and new accumulators computed before any is stored, so an
    event whose value cannot be aggregated changes nothing (an aggregator
    that adds in place admits the value first: `Aggregator.admit`).

    >>> from operators import agg
    >>> aggs = [agg.count(), agg.sum("real"), agg.collect("imag")]
    >>> add = make_adder(aggs)
    >>> accs = [g.create() for g in aggs]
    >>> add(accs, 2.5, 0.0); add(accs, 1.5, 0.0); [g.result(a) for g, a in zip(aggs, accs)]
    [2, 4.0, [0.0, 0.0]]
    >>> add(accs, "x", 0.0)
    Traceback (most recent call last):
    ...
    AttributeError: 'str' object has no attribute 'real'
    >>> [g.result(a) for g, a in zip(aggs, accs)]
    [2, 4.0, [0.0, 0.0]]
    """
    env: dict[str, Any] = {"exact_add": exact_add}

    def body(inline: bool) -> list[str]:
        take, store = _add_lines(aggs, env, inline=inline)
        lines = [f"n{i} = {expr}" for i, expr in enumerate(take)]
        if _reads_fields(aggs):  # a dict's fields are its keys: read when an attribute is not
            keyed, _ = _add_lines(aggs, env, keys=True, inline=inline)
            lines = _or_keys(lines, [f"n{i} = {expr}" for i, expr in enumerate(keyed)])
        return lines + (["; ".join(store)] if store else ["pass"])

    exec("\n".join(_guarded("add", "a, e, ts", aggs, body)), env)
    adder: Callable[[list[Any], Any, float], None] = env["add"]
    return adder


def _guarded(
    name: str, args: str, aggs: Sequence[Aggregator], body: Callable[[bool], list[str]]
) -> list[str]:
    """Return the lines of function ``name``: ``body(True)``, inline expressions and all.

    Where an aggregator's inline expression may raise a `TypeError` that its
    ``add`` would not (``max`` of a number and a text: `Aggregator.inline_guarded`),
    such a failure calls ``body(False)`` instead, which calls each ``add``: no
    test on the quick path, which is free until it catches (taking changes
    nothing, so the second try starts from where the first did).
    """
    quick = [f"def {name}({args}):", *(f"    {line}" for line in body(True))]
    if not any(g.inline_guarded for g in aggs):
        return quick
    return [
        f"def {name}({args}):",
        "    try:",
        *(f"        {line}" for line in body(True)),
        "    except TypeError:",
        f"        {name}_by_add({args})",
        f"def {name}_by_add({args}):",
        *(f"    {line}" for line in body(False)),
    ]


def _reads_fields(aggs: Sequence[Aggregator]) -> bool:
    return any(g.field is not None for g in aggs)


def _or_keys(by_attribute: list[str], by_key: list[str]) -> list[str]:
    """Take values by attribute; where one is missing and the record is a dict, by key.

    The attribute way costs nothing more (a ``try`` is free until it catches).
    """
    return [
        "try:",
        *(f"    {line}" for line in by_attribute),
        "except AttributeError:",
        "    if e.__class__ is not dict:",
        "        raise",
        *(f"    {line}" for line in by_key),
    ]


def make_spreader(aggs: Sequence[Aggregator]) -> Callable[[list[list[Any]], Any, float], None]:
    """Generate ``spread(windows, event, ts)``: add one event to several windows' accumulators.

    Every window takes the event's values, computing its new accumulators
    (or, for an aggregator that adds in place, the value it admits), before
    any accumulator changes: all of them take it, or none does. Then each
    window's accumulators are replaced in place.

    >>> from operators import agg
    >>> aggs = [agg.collect("real"), agg.max("imag"), agg.count()]
    >>> spread = make_spreader(aggs)
    >>> one, two = [g.create() for g in aggs], [g.create() for g in aggs]
    >>> def results(accs): return [g.result(a) for g, a in zip(aggs, accs)]
    >>> spread([one, two], 1.0, 0.0); spread([two], 2.0, 0.0); results(one), results(two)
    ([[1.0], 0.0, 1], [[1.0, 2.0], 0.0, 2])
    >>> spread([one, two], "x", 0.0)
    Traceback (most recent call last):
    ...
    AttributeError: 'str' object has no attribute 'real'
    >>> results(one), results(two)
    ([[1.0], 0.0, 1], [[1.0, 2.0], 0.0, 2])
    """
    env: dict[str, Any] = {"exact_add": exact_add}

    def taking(take: list[str]) -> str:
        values = ", ".join(take)  # one comprehension over the windows takes them all
        return f"taken = [{f'({values})' if len(aggs) > 1 else values} for a in windows]"

    names = ", ".join(f"n{i}" for i in range(len(aggs)))
    if len(aggs) > 1:
        names = f"({names})"

    def body(inline: bool) -> list[str]:
        take, store = _add_lines(aggs, env, inline=inline)
        lines = [taking(take)]
        if _reads_fields(aggs):  # a dict's fields are its keys: read when an attribute is not
            lines = _or_keys(lines, [taking(_add_lines(aggs, env, keys=True, inline=inline)[0])])
        return [*lines, f"for a, {names} in zip(windows, taken):", f"    {'; '.join(store)}"]

    lines = _guarded("spread", "windows, e, ts", aggs, body)
    if not aggs:
        lines = ["def spread(windows, e, ts):", "    pass"]
    exec("\n".join(lines), env)
    spreader: Callable[[list[list[Any]], Any, float], None] = env["spread"]
    return spreader


def make_finisher(
    step: str,
    names: Sequence[str],
    aggs: Sequence[Aggregator],
    construct: Callable[..., Any],
    *,
    inclusive: bool = False,
    kind: str | None = None,
) -> Callable[..., Any]:
    """Generate ``finish(key, start, end, accs)``: the result record of a closed window.

    Its ``type`` is ``kind`` (by default the step's name); its ``id`` starts
    with the step's name.

    Its ``time`` is the window's last instant, one microsecond before its
    ``end`` (with ``inclusive``, for count windows whose end is their last
    event's time, the end itself): so a window after this one puts the
    result in the window that holds this one.

    >>> from operators import agg
    >>> finish = make_finisher("s", ["n", "total"], [agg.count(), agg.sum("x")], dict)
    >>> r = finish("k", 10.0, 20.0, [2, agg.sum("x").add(agg.sum("x").create(), 1.5, 0, None)])
    >>> r["id"], r["n"], r["total"], r["end"].isoformat()
    ('s/k/10.000000', 2, 1.5, '1970-01-01T00:00:20+00:00')
    """
    env: dict[str, Any] = {
        "utc": _utc,
        "last": _utc if inclusive else just_before,
        "construct": construct,
        "kind": step if kind is None else kind,
        "head": f"{step}/",
    }
    values = []
    for i, (name, g) in enumerate(zip(names, aggs, strict=True)):
        env[f"g{i}"] = g
        values.append(f"{name!r}: {g.inline_result(f'a[{i}]') or f'g{i}.result(a[{i}])'}")
    env.update(exact_total=exact_total)
    lines = [
        "def finish(key, start, end, a, final=True, tag=''):",
        "    return construct({'type': kind, 'id': f'{head}{key}/{start:.6f}{tag}', "
        "'time': last(end), 'key': key, 'start': utc(start), 'end': utc(end), "
        "'final': final, " + ", ".join(values) + "})",
    ]
    exec("\n".join(lines), env)
    finisher: Callable[..., Any] = env["finish"]
    return finisher


def own_type(model: Any) -> str | None:
    """Return the one ``type`` a result model declares (``Literal["totals"]``), if any.

    >>> from operators import Event
    >>> class Totals(Event):
    ...     n: int = 0
    >>> own_type(Totals), own_type(Event)
    ('totals', None)
    """
    annotation = model.model_fields["type"].annotation
    args = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
    return str(args[0]) if len(args) == 1 else None


def make_merger(aggs: Sequence[Aggregator]) -> Callable[[list[Any], list[Any]], None]:
    """Generate ``merge(held, accs)``: merge each of ``accs`` into ``held``, all or nothing.

    The merges that may fail (of aggregators that do not change their
    accumulators in place) are computed first, then those of aggregators
    that merge in place (which must not fail), and only then is anything
    stored: a merge that fails leaves ``held`` as it was.

    >>> from operators import agg
    >>> merge = make_merger([agg.count(), agg.max("x")])
    >>> held = [2, 5.0]
    >>> merge(held, [3, 7.0]); held
    [5, 7.0]
    >>> merge(held, [1, float("nan")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: max(x) cannot take nan: it is neither above nor below any value, ...
    >>> held
    [5, 7.0]
    """
    env: dict[str, Any] = {"exact_merge": exact_merge}
    values, in_place = _merge_lines(aggs, env)
    lines = ["def merge(h, a):", *(f"    n{i} = {expr}" for i, expr in values)]
    lines += [f"    h[{i}] = {expr}" for i, expr in in_place]
    lines += [f"    h[{i}] = n{i}" for i, _ in values]
    if not aggs:
        lines.append("    pass")
    exec("\n".join(lines), env)
    merger: Callable[[list[Any], list[Any]], None] = env["merge"]
    return merger


def make_merger_in_two(
    aggs: Sequence[Aggregator],
) -> tuple[Callable[[list[Any], list[Any]], None], Callable[[list[Any], list[Any]], None]]:
    """Generate ``merge_values(held, accs)`` and ``merge_in_place(held, accs)``: a merge in two.

    For merging several accumulators into one, all or nothing: every merge
    of the values (which may fail) first, on a copy of the held list, then
    every merge in place (which must not fail).

    >>> from operators import agg
    >>> values, in_place = make_merger_in_two([agg.collect("x"), agg.max("x")])
    >>> held = [[1.0], 1.0]
    >>> trial = held.copy()
    >>> values(trial, [[2.0], 2.0]); values(trial, [[3.0], float("nan")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: max(x) cannot take nan: it is neither above nor below any value, ...
    >>> held
    [[1.0], 1.0]
    """
    env: dict[str, Any] = {"exact_merge": exact_merge}
    values, in_place = _merge_lines(aggs, env)
    lines = ["def merge_values(h, a):", *(f"    h[{i}] = {expr}" for i, expr in values), "    pass"]
    lines += ["def merge_in_place(h, a):", *(f"    h[{i}] = {e}" for i, e in in_place), "    pass"]
    exec("\n".join(lines), env)
    merge_values: Callable[[list[Any], list[Any]], None] = env["merge_values"]
    merge_in_place: Callable[[list[Any], list[Any]], None] = env["merge_in_place"]
    return merge_values, merge_in_place


def _merge_lines(
    aggs: Sequence[Aggregator], env: dict[str, Any]
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Return the merge expressions ``(index, expression of h and a)``: by value, in place."""
    values: list[tuple[int, str]] = []
    in_place: list[tuple[int, str]] = []
    for i, g in enumerate(aggs):
        env[f"g{i}"] = g
        expr = g.inline_merge(f"h[{i}]", f"a[{i}]") or f"g{i}.merge(h[{i}], a[{i}])"
        (in_place if g.in_place else values).append((i, expr))
    return values, in_place


#: Values that cannot change in place.
_ATOMS = (int, float, complex, str, bytes, bool, type(None), Decimal)


def frozen(value: Any) -> bool:
    """Whether ``value`` cannot change in place, all the way down.

    Windows share a fresh accumulator from `Aggregator.create` only when it is
    frozen (a tuple of numbers, say); a tuple holding a list is not.

    >>> frozen((0, 0.0)), frozen((0, [])), frozen(frozenset({1, (2, 3)})), frozen([])
    (True, False, True, False)
    """
    if isinstance(value, _ATOMS):
        return True
    if type(value) in (tuple, frozenset):
        return all(frozen(v) for v in value)
    return False


def make_fresh(aggs: Sequence[Aggregator]) -> Callable[[], list[Any]]:
    """Return a function making new accumulators, one per aggregator.

    It copies one list when none of them can change in place (`frozen`).

    >>> from operators import agg
    >>> fresh = make_fresh([agg.count(), agg.max("x")])
    >>> fresh(), fresh() is fresh()
    ([0, None], False)
    >>> make_fresh([agg.collect("x")])()
    [[]]
    """
    template = [g.create() for g in aggs]
    if all(frozen(a) for a in template):
        return template.copy
    return lambda: [g.create() for g in aggs]


def aggregate_shape(window: Window | None, names: list[str], aggs: list[Aggregator]) -> str:
    """Say what an aggregate's state is made of: its window and its aggregators.

    >>> from operators import agg, windows
    >>> aggregate_shape(windows.sliding(60, 10), ["n", "top"], [agg.count(), agg.max("x")])
    'windows Sliding(size=60.0, every=10.0) of n=count(), top=max(x)'
    >>> aggregate_shape(None, ["n"], [agg.count()])
    'running aggregates of n=count()'
    """
    kind = "running aggregates" if window is None else f"windows {window!r}"
    fields = ", ".join(f"{name}={g.label}" for name, g in zip(names, aggs, strict=True))
    return f"{kind} of {fields}"


@dataclass
class WindowSpec:
    """Everything one aggregate step's bucket logic needs."""

    pipeline: str
    step: str
    row: int
    counters: Counters
    window: Window | None
    clock: Clock | None
    names: list[str]
    aggs: list[Aggregator]
    result_model: Any
    partitions: list[str]
    late_wanted: bool
    emit: str = "final"
    ttl: float | None = None
    #: With ``emit="early"``: seconds (wall clock) between a window's early results.
    every: float | None = None
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    #: What the steps on event time after this one need to know of when it
    #: made its results (None: no such step reads them).
    notes: Notes | None = None
    #: The classes of the events aggregated (None: not known).
    classes: tuple[type[Event], ...] | None = None

    def __post_init__(self) -> None:
        """Generate the adder and the merger once."""
        self.add = make_adder(self.aggs)
        #: Adds an event to each of its sliding windows: `make_spreader`.
        self.spread = make_spreader(self.aggs)
        self.merge = make_merger(self.aggs)
        #: Sliding windows aggregated into panes, merged when a window closes.
        self.paned = can_slice(self.window, self.aggs, self.classes)
        #: Returns new accumulators, one per aggregator.
        self.fresh = make_fresh(self.aggs)
        self.merge_values, self.merge_in_place = make_merger_in_two(self.aggs)
        self.fields_set = frozenset(self.result_model.model_fields)
        #: The results' ``type``: their model's own (the step's name, or what a
        #: model named with ``into=`` declares), so each validates as its model.
        self.kind = own_type(self.result_model) or self.step
        #: What the state is made of: a resume from another shape is refused.
        self.shape = aggregate_shape(self.window, self.names, self.aggs)
        self.finish = make_finisher(
            self.step,
            self.names,
            self.aggs,
            self.construct,
            inclusive=isinstance(self.window, Count),
            kind=self.kind,
        )
        clock = self.clock
        self.delay = clock.max_delay if isinstance(clock, EventTime) else 0.0
        self.idle = clock.idle_timeout if isinstance(clock, EventTime) else 0.0
        self.event_time = isinstance(clock, EventTime)

    def construct(self, fields: dict[str, Any]) -> Any:
        """Make a result record from values that are known to be valid.

        This is what pydantic's ``model_construct`` does, without its per-field
        checks, which cost four times as much as the rest of a window's work.
        A result holds its own copies of mutable values (`own`): the records a
        ``collect`` or ``first`` holds stay in the window's state (an early
        result's window goes on, a sliding window's records are in the next).
        """
        return own(construct_valid(self.result_model, fields, self.fields_set))


def _setter(name: str) -> Callable[[Any, Any], None]:
    """Return the setter of a pydantic model's own attribute ``name``, to call directly.

    Its ``__dict__`` and the slots pydantic keeps beside it: `object.__setattr__`
    looks the descriptor up again on every call. Where pydantic keeps none of
    that name, `object.__setattr__` itself.

    >>> class Box:
    ...     pass
    >>> box = Box()
    >>> _setter("not_pydantics")(box, 1)
    >>> box.not_pydantics
    1
    """
    found = vars(pydantic.BaseModel).get(name)
    if found is not None and hasattr(found, "__set__"):
        setter: Callable[[Any, Any], None] = found.__set__
        return setter
    return lambda record, value: object.__setattr__(record, name, value)


_SET_DICT = _setter("__dict__")
_SET_FIELDS_SET = _setter("__pydantic_fields_set__")
_SET_EXTRA = _setter("__pydantic_extra__")
_SET_PRIVATE = _setter("__pydantic_private__")


def construct_valid(model: Any, fields: dict[str, Any], names: frozenset[str]) -> Any:
    """Make a ``model`` record from ``fields`` known to be valid (``names``: the model's fields).

    >>> from operators._joining import Joined
    >>> fields = {"type": "j", "id": "j/1", "time": _utc(0), "key": "k", "left": 1,
    ...           "right": None, "start": None, "end": None}
    >>> made = construct_valid(Joined, fields, frozenset(fields))
    >>> made.key, made.right, made.model_fields_set == set(fields), made.model_extra
    ('k', None, True, None)
    """
    record = model.__new__(model)
    _SET_DICT(record, fields)
    _SET_FIELDS_SET(record, set(names))
    _SET_EXTRA(record, None)
    _SET_PRIVATE(record, None)
    return record


def can_combine(window: Window | None, clock: Clock | None, aggs: Sequence[Aggregator]) -> bool:
    """Whether a windowed step's events can be aggregated before the key exchange.

    Tumbling event-time windows whose aggregators all merge can.

    >>> from operators import agg, windows
    >>> can_combine(windows.tumbling(seconds=10), windows.event_time(), [agg.sum("x")])
    True
    >>> can_combine(windows.session(gap=10), windows.event_time(), [agg.count()])
    False
    """
    return (
        isinstance(window, Tumbling)
        and isinstance(clock, EventTime)
        and all(type(g).merge is not Aggregator.merge for g in aggs)
    )


def can_slice(
    window: Window | None,
    aggs: Sequence[Aggregator],
    classes: tuple[type[Event], ...] | None = None,
) -> bool:
    """Whether a sliding window's events can be aggregated once each, into panes.

    A pane is one step (``every``) of event time; a window's result merges
    the panes it spans (see `WindowLogic._paned`), so its size must be a
    whole number of steps (`windows.sliding` asks that; a `Sliding` made
    directly may not). Aggregators that all say they can for events of
    ``classes`` (`Aggregator.slices_for`: every built-in but ``collect``,
    and ``max`` and ``min`` only of a field every class declares an int, a
    float or a str) can.

    >>> from operators import agg, windows
    >>> can_slice(windows.sliding(seconds=60, every=10), [agg.count(), agg.mean("x")])
    True
    >>> can_slice(windows.sliding(seconds=60, every=10), [agg.count(), agg.max("x")])
    False
    >>> can_slice(windows.tumbling(seconds=60), [agg.count()])
    False
    >>> can_slice(windows.Sliding(size=25, every=10), [agg.count()])
    False
    """
    return (
        isinstance(window, Sliding)
        and window.size_us % window.every_us == 0
        and all(g.slices_for(classes) for g in aggs)
    )


#: Microseconds from which a window's bounds in seconds are not told apart
#: finely enough by a float to skip the rounding (`_inside`): year 2182.
_FINE_US = 6 * 10**15


def _inside(low: int, high: int) -> tuple[float, float]:
    """Return bounds in seconds within which a time is surely in the window ``[low, high)`` µs.

    A time ``ts`` with ``lo <= ts < hi`` rounds (``round(ts * 1e6)``, as
    `Tumbling.start_of` does) into the window: the bounds keep 2 µs inside
    its ends, more than a float's error on times before `_FINE_US`. Others
    (near an end, or beyond) are rounded. Times before 1970 always are.

    >>> _inside(10_000_000, 20_000_000)
    (10.000002, 19.999998)
    >>> _inside(-10_000_000, 0)  # no time is told by comparing: each is rounded
    (inf, -inf)
    """
    if low < 0 or high >= _FINE_US:
        return math.inf, -math.inf
    return (low + 2) / 1_000_000, (high - 2) / 1_000_000


def tumbling_of(window: Tumbling, ts: float) -> tuple[float, float, float, float]:
    """Return the window of ``window`` that holds ``ts``: ``(start, end, lo, hi)``.

    ``lo`` and ``hi`` bound the times surely in it too (`_inside`), so a loop
    over times mostly in order finds the next one's window by comparing.

    >>> tumbling_of(Tumbling(10.0), 25.5)
    (20.0, 30.0, 20.000002, 29.999998)
    """
    size_us = window.size_us
    t = round(ts * 1_000_000)  # Tumbling.start_of, inline
    low = t - (t - window.offset_us) % size_us
    start = low / 1_000_000
    lo, hi = _inside(low, low + size_us)
    return start, window.end_of(start), lo, hi


class Combiner:
    """Aggregate a chunk's events per key and tumbling window before the key exchange.

    Runs where the chunk was read (in `Bucketize`), so it sees each source
    partition in order: an event behind its partition's watermark (as this
    worker last saw it) goes on as it is, and the window step judges it
    exactly as it would without combining. The others become partial windows
    ``(key, start, end, accs, ids)``; the window step merges them. If a
    partial reaches a window that has already closed (its partition was idle
    past the clock's ``idle_timeout`` meanwhile, or the run resumed), each of
    its events becomes a late dead letter naming the event id.
    """

    def __init__(self, window: Tumbling, aggs: Sequence[Aggregator], delay: float) -> None:
        """Combine into the windows of ``window``."""
        self.size = window.size
        self.window = window
        self.aggs = list(aggs)
        self.add = make_adder(aggs)
        self.delay = delay
        self.wm: dict[str, float] = {}
        self.fresh = make_fresh(self.aggs)

    def add_chunk(
        self,
        records: list[tuple[str, float, Any]],
        partition: str,
        latest: float,
        wins: dict[tuple[str, float], tuple[list[Any], list[str]]],
        set_aside: Callable[[tuple[str, float, Any], float], None],
    ) -> tuple[list[Any], float]:
        """Aggregate one chunk's events into ``wins``; return those to send as they are.

        Also returns the partition's newest event time after the chunk;
        ``latest`` is the one before it in this batch. An event behind that
        (less the clock's delay) when it comes is handed to ``set_aside``
        with the watermark it is behind, for the window step to judge. One
        behind the partition's watermark as this worker last saw it goes on as
        it is. ``wins`` may already hold windows from earlier chunks of the
        same partition in this batch: they go on growing. The partition's
        watermark moves on after the chunk.
        """
        own = self.wm.get(partition, _NEVER)
        delay = self.delay
        floor = latest - delay
        size_us = self.window.size_us
        off = self.window.offset_us
        add = self.add
        fresh = self.fresh
        raw: list[Any] = []
        get = wins.get
        # The window of the record before (runs of one key and window are
        # common): a time ``inside`` it, ``lo <= ts < hi`` in seconds, is in it.
        last_key: str | None = None
        lo = hi = 0.0
        accs: list[Any] = []
        ids: list[str] = []
        for record in records:
            key, ts, event = record
            if ts < floor:
                set_aside(record, floor)
                continue
            if ts > latest:
                latest = ts
                floor = ts - delay
            if ts < own:
                raw.append(record)
                continue
            if not lo <= ts < hi or key != last_key:
                t = round(ts * 1_000_000)  # Tumbling.start_of, inline
                low = t - (t - off) % size_us
                lo, hi = _inside(low, low + size_us)
                start = low / 1_000_000
                slot = get((key, start))
                if slot is None:
                    slot = wins[(key, start)] = (fresh(), [])
                accs, ids = slot
                last_key = key
            try:
                add(accs, event, ts)
            except Exception:  # noqa: BLE001 - the window step meets it again, as usual
                raw.append(record)
                continue
            try:
                ids.append(event.id)
            except AttributeError:  # a record without an id (a dict)
                ids.append("")
        if latest != _NEVER and latest - delay > own:
            self.wm[partition] = latest - delay
        return raw, latest

    def partials(
        self, wins: dict[tuple[str, float], tuple[list[Any], list[str]]]
    ) -> list[tuple[str, float, float, list[Any], list[str]]]:
        """Return the partial windows of ``wins``: ``(key, start, end, accs, ids)``."""
        end_of = self.window.end_of
        return [
            (key, start, end_of(start), accs, ids)
            for (key, start), (accs, ids) in wins.items()
            if ids
        ]


T = TypeVar("T")


def kept(make: Callable[[float], T], limit: int = 50_000) -> Callable[[float], T]:
    """Return ``make``, keeping what it made for each time (up to ``limit``, then anew).

    Many results share window bounds: their datetimes and texts are made once.

    >>> text = kept(lambda s: f"{s:.1f}", limit=1)
    >>> text(1.0), text(1.0) is text(1.0), text(2.0), text(3.0)
    ('1.0', True, '2.0', '3.0')
    """
    made: dict[float, T] = {}

    def get(seconds: float) -> T:
        found = made.get(seconds)
        if found is None:
            if len(made) > limit:
                made.clear()
            found = made[seconds] = make(seconds)
        return found

    return get


_utc = kept(lambda seconds: datetime.fromtimestamp(seconds, timezone.utc))


def wake_at(seconds: float) -> datetime | None:
    """Return when the engine is to wake a step (``seconds`` on the wall clock).

    A time past the years a datetime can hold (a ttl of 1e12 s, "for ever")
    is never: None.

    >>> wake_at(60.0).isoformat(), wake_at(1e12), wake_at(253402300800.0)
    ('1970-01-01T00:01:00+00:00', None, None)
    """
    return None if seconds >= _END else _utc(seconds)


_BEFORE_CACHE: dict[float, datetime] = {}
_MICROSECOND = timedelta(microseconds=1)
#: A microsecond in seconds: a window's result is dated this before its end.
_TICK = 1e-6


def just_before(seconds: float) -> datetime:
    """Return the last instant before ``seconds``: a window's last instant before its end.

    >>> just_before(60.0).isoformat()
    '1970-01-01T00:00:59.999999+00:00'
    """
    found = _BEFORE_CACHE.get(seconds)
    if found is None:
        if len(_BEFORE_CACHE) > 50_000:
            _BEFORE_CACHE.clear()
        found = _BEFORE_CACHE[seconds] = _utc(seconds) - _MICROSECOND
    return found


#: A session's start (sessions are ``[start, end, ...]``): the key a key's sessions are sorted by.
_START = operator.itemgetter(0)


def overlapping(held: list[list[Any]], start: float, end: float) -> tuple[int, int]:
    """Return the slice ``lo:hi`` of the sessions in ``held`` that ``[start, end)`` overlaps.

    A key's sessions never overlap one another and are kept sorted by their
    start (so by their end too): those that overlap are found by bisection,
    a run just before the first session that starts at or after ``end``.

    >>> overlapping([[0, 5], [10, 15], [20, 25]], 4, 11)
    (0, 2)
    >>> overlapping([[0, 5], [10, 15]], 5, 10)  # touching is not overlapping
    (1, 1)
    """
    hi = bisect.bisect_left(held, end, key=_START)
    lo = hi
    while lo and held[lo - 1][1] > start:
        lo -= 1
    return lo, hi


def sort_sessions(sessions: dict[Any, list[list[Any]]]) -> None:
    """Sort each key's sessions by start (a snapshot of an earlier evflow kept them unsorted)."""
    for held in sessions.values():
        held.sort(key=_START)


def pop_session(sessions: dict[str, list[list[Any]]], key: str, start: float, closes: float,
                gap: float, heap: list[tuple[float, str, float]]) -> list[Any] | None:  # fmt: skip
    """Take out the session of ``key`` that a closing entry ``(closes, key, start)`` names.

    Sessions are ``[start, end, ...]``, sorted by start, and close one gap
    after their end. A session has one closing entry per start it had: one
    that grew at its end since keeps its entry, which is pushed back, to its
    new closing time, when it comes up (so a session holding many events
    holds one entry, not one per event). None when the session has not
    closed yet, or has since merged into another or started earlier (the
    entry is stale).
    """
    held = sessions.get(key)
    if not held:
        return None
    i = bisect.bisect_left(held, start, key=_START)
    if i == len(held) or held[i][0] != start:
        return None
    due = held[i][1] + gap
    if due != closes:
        heapq.heappush(heap, (due, key, start))
        return None
    found = held.pop(i)
    if not held:
        del sessions[key]
    return found


class Watermarks(Making):
    """Per-partition watermarks of a keyed step, for one key bucket.

    ``wm`` holds each source partition's watermark (its newest event time
    less the clock's ``max_delay``; ``_DONE`` once it has ended), ``idle``
    since when each partition's source has had nothing to read, and
    ``closed`` how far the step has already closed (it never goes back).
    """

    wm: dict[str, float]
    idle: dict[str, float | None]
    closed: float
    idle_timeout: float
    #: The watermark last reported downstream (see `report`).
    reported: float = _NEVER
    #: The newest event time the step's input has reached (the partitions' own
    #: times, or the marks of the step before): where event time ends with the input.
    newest: float = _NEVER

    def start_watermarks(
        self, state: dict[str, Any], partitions: list[str], idle_timeout: float
    ) -> None:
        """Start with every partition unread, or with a snapshot's watermarks."""
        self.wm = state.get("wm") or dict.fromkeys(partitions, _NEVER)
        #: Since when each partition's source has said it has nothing to read
        #: (None: it is reading). A busy step never makes a partition idle.
        self.idle = dict.fromkeys(self.wm)
        self.closed = state.get("closed", _NEVER)
        self.newest = state.get("newest", _NEVER)
        self.idle_timeout = idle_timeout

    def reached(self, latest: float) -> None:
        """Move ``newest`` on to a partition's progress ``latest`` (the end never counts)."""
        if self.newest < latest != _DONE:
            self.newest = latest

    def judge(self, part: str, made_at: float | None, delay: float) -> float:
        """Return the watermark a record of partition ``part`` is judged against.

        A source's record: the partition's own watermark just before it. A
        record a step on event time made: when that step made it, less
        ``delay`` (this step's ``max_delay``), so a record dated before its
        making is late or not whatever the batches. Never before what this
        step has already closed.
        """
        own = self.wm.get(part, _NEVER) if made_at is None else made_at - delay
        return own if own > self.closed else self.closed

    def report(self, mark: float, lag: float, out: list[tuple[str, Any]]) -> None:
        """Tell the steps after this one how far it has got, when that moved.

        Every result to come from this bucket is then at or after
        ``mark - lag`` (``lag``: how far before the watermark a result can be
        dated: a session's gap, as sessions close one gap after their end).

        When the input ends, the newest event time it reached goes first:
        the steps after this one end their data there, whatever the batches.
        """
        if mark == _DONE and self.newest - lag > self.reported:
            self.reported = self.newest - lag
            out.append(("w", self.reported))
        made = mark - lag
        if made > self.reported:
            out.append(("w", made))
            self.reported = made

    def low_mark(self, now: float) -> float:
        """Return the smallest watermark of the partitions that hold the step back."""
        # A partition whose source has had nothing to read for longer than
        # idle_timeout does not hold the others back; when every open
        # partition is idle, the watermark follows the wall clock from the
        # newest event time read (never from the wall clock alone: a partition
        # that has read nothing gives no event time).
        waiting = [p for p, wm in self.wm.items() if wm != _DONE]
        idle = self.idle
        active = []
        for p in waiting:
            since = idle[p]
            if since is None or now - since <= self.idle_timeout:
                active.append(self.wm[p])
        if active:
            low = min(active)
        elif not waiting:
            low = _DONE
        else:
            newest = max(self.wm[p] for p in waiting)
            if newest == _NEVER:
                low = _NEVER
            else:
                since = max(idle[p] or 0.0 for p in waiting)
                low = newest + max(0.0, now - since - self.idle_timeout)
        return low if low > self.closed else self.closed

    def wall_due(self, end: float) -> datetime | None:
        """When the wall clock alone could bring the watermark to ``end`` (None: never)."""
        lagging = [p for p, wm in self.wm.items() if wm < end]
        if not lagging:
            return None
        # When the lagging partitions have all gone idle they stop holding
        # the step; if no partition is past ``end``, the wall clock must
        # also cover the rest of the way. A partition still reading holds it.
        quiet = [self.idle[p] for p in lagging]
        if any(since is None for since in quiet):
            return None
        due = max(since or 0.0 for since in quiet) + self.idle_timeout
        if len(lagging) == len(self.wm):
            newest = max(self.wm.values())
            if newest == _NEVER:
                return None
            due += end - newest
        return wake_at(due)


class WindowLogic(Watermarks, StatefulBatchLogic[Marked, tuple[str, Any], dict[str, Any]]):
    """All windows (or running aggregates) of the keys of one bucket."""

    def __init__(self, spec: WindowSpec, resume: dict[str, Any] | None) -> None:
        """Start empty, or from a snapshot."""
        check_layout(spec.step, resume)
        check_shape(spec.step, resume, spec.shape)
        self.spec = spec
        state = resume or {}
        self.start_watermarks(state, spec.partitions, spec.idle)
        self.wins: dict[Any, Any] = state.get("wins", {})
        if isinstance(spec.window, Session):
            sort_sessions(self.wins)
        #: ``(when the window closes, key, start)``; a session closes one gap
        #: after its end (see `_session`).
        self.heap: list[tuple[float, str, float]] = state.get("heap", [])
        window = spec.window
        if isinstance(window, Session) and state and state.get("sessions") != "end+gap":
            # A snapshot of an evflow that closed sessions at their end.
            self.heap = [(end + window.gap, key, start) for end, key, start in self.heap]
            heapq.heapify(self.heap)
        #: Sliding windows built from panes (`_paned`): ``key -> {pane start:
        #: accs}``. ``wins`` then holds each open window with None, or with the
        #: accumulators of the events it holds that are not in its panes (those
        #: behind their partition's watermark for some windows of their pane).
        self.panes: dict[str, dict[float, list[Any]]] = state.get("panes", {})
        if self.panes and not spec.paned:
            # Resumed with aggregators that do not merge into panes: whole windows.
            for end, key, start in self.heap:
                self.wins[(key, start)] = self._window_accs(
                    key, start, end, self.wins[(key, start)], to_keep=True
                )
            self.panes = {}
        #: Running keys with a ttl: when each expires (wall clock). A key a
        #: snapshot from before expiries were kept holds gets a whole ttl anew.
        self.expiry: dict[str, float] = state.get("expiry", {})
        if spec.ttl is not None and len(self.expiry) < len(self.wins) and window is None:
            anew = time.time() + spec.ttl
            for key in self.wins:
                self.expiry.setdefault(key, anew)
        #: How far before the watermark a result can be dated (see `report`).
        self.lag = window.gap if isinstance(window, Session) else 0.0
        #: emit="early": the keys whose windows changed since their last early
        #: results, when the next are due (wall clock), and how many each window had.
        self.dirty: set[str] = set()
        self.early_at = 0.0
        self.versions: dict[tuple[str, float], int] = state.get("versions", {})
        self.mark_key = (spec.step, str(id(self)))
        if self.wins:
            # Resumed: the restored windows are open in this run too.
            held = self.wins.values()
            restored = sum(len(v) for v in held) if isinstance(spec.window, Session) else len(held)
            spec.counters.table()[spec.row][_OPEN] += restored

    # -- watermark ---------------------------------------------------------

    def watermark(self, now: float | None = None) -> float:
        """Return the smallest partition watermark (following the wall clock when idle)."""
        if not self.spec.event_time:
            return time.time() if now is None else now
        return self.low_mark(time.time() if now is None else now)

    # -- results -----------------------------------------------------------

    def _running_result(self, key: str, accs: list[Any], after: str | None = None) -> Any:
        """Make a running aggregate's result (no window: it is timed now).

        A window's result comes from ``spec.finish``. ``after`` tells the
        results of one key apart in their ids: the id of the event each
        update follows, or when a final one expired.
        """
        spec = self.spec
        fields: dict[str, Any] = {
            "type": spec.kind,
            "id": f"{spec.step}/{key}/running"
            if after is None
            else f"{spec.step}/{key}/running/{after}",
            "time": datetime.now(timezone.utc),
            "key": key,
            "start": None,
            "end": None,
        }
        for n, g, a in zip(spec.names, spec.aggs, accs, strict=True):
            fields[n] = g.result(a)
        return spec.construct(fields)

    def _close(self, upto: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        heap = self.heap
        wins = self.wins
        window = self.spec.window
        gap = window.gap if isinstance(window, Session) else 0.0
        paned = self.spec.paned
        notes = self.spec.notes
        if notes is not None and notes.dated:
            self.made(out, None)  # results are dated their window's last instant, when made
        while heap and heap[0][0] <= upto:
            end, key, start = heapq.heappop(heap)
            if isinstance(window, Session):
                found = pop_session(wins, key, start, end, gap, heap)
                if found is None:
                    continue  # not due yet, or merged into another session since
                end = found[1]
                accs = found[2]
            else:
                accs = wins.pop((key, start))
            row[_CREATED] += 1
            row[_OPEN] -= 1
            if self.versions:
                self.versions.pop((key, start), None)
            try:
                if paned:
                    accs = self._window_accs(key, start, end, accs, closing=True)
                result = self.spec.finish(key, start, end, accs)
            except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                self._failed_result(key, start, exc, out, row)
                continue
            if notes is not None and not notes.dated:
                self.note(out, notes, result, end - _TICK)
            out.append(("r", result))
            row[_OUT] += 1
        if upto > self.closed:
            self.closed = upto

    def _window_accs(
        self,
        key: str,
        start: float,
        end: float,
        extras: list[Any] | None,
        *,
        closing: bool = False,
        to_keep: bool = False,
    ) -> list[Any]:
        """Return the accumulators of ``key``'s sliding window ``[start, end)``.

        Its panes merged, and ``extras`` (its own events, see `panes`), into
        new accumulators; the part itself where there is one alone, unless
        the window is ``to_keep`` them (and add to them). When
        ``closing``, the panes from its start on go first: no window still
        open spans them (windows close in order of their start).
        """
        spec = self.spec
        mine = self.panes.get(key)
        parts = [] if mine is None else [a for p, a in mine.items() if start <= p < end]
        if closing and mine is not None:
            for p in [p for p in mine if p <= start]:
                del mine[p]
            if not mine:
                del self.panes[key]
        if extras is not None:
            parts.append(extras)
        if len(parts) == 1 and not to_keep:
            return parts[0]  # (a result reads its accumulators, and leaves them as they are)
        accs = spec.fresh()
        merge = spec.merge
        for part in parts:
            merge(accs, part)
        return accs

    # -- the bytewax protocol ------------------------------------------------

    def on_batch(self, values: list[Marked]) -> tuple[list[tuple[str, Any]], bool]:
        """Add a batch of records and close the windows the watermarks pass."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        window = spec.window
        now = time.time()
        for marked in values:
            if marked.partials:
                # Windows close only after the whole batch: merging first is
                # the same as merging chunk by chunk.
                row[_IN] += marked.combined
                self._merge(marked.partials, out, row)
            part = marked.partition
            tracked = spec.event_time and part in self.wm
            if marked.behind and window is not None and not isinstance(window, Count):
                # Set aside before the events were aggregated where they were
                # read: each is judged against the watermark just before it.
                row[_IN] += len(marked.behind)
                floor = max(self.wm.get(part, _NEVER), self.closed)
                for record, wm in marked.behind:
                    self._timed(window, [record], out, row, part, wm if wm > floor else floor)
            segments = marked.segments() if tracked else [(marked.records, marked.latest, None)]
            for records, latest, made_at in segments:
                if records and spec.every is not None:
                    self.dirty.update(r[0] for r in records)
                if records:
                    row[_IN] += len(records)
                    if window is None:
                        self._running(records, out, row, now)
                    elif isinstance(window, Count):
                        self._count(window, records, out, row)
                    else:
                        self._timed(
                            window,
                            records,
                            out,
                            row,
                            part,
                            None if made_at is None else self.judge(part, made_at, spec.delay),
                        )
                if tracked and latest != _NEVER:
                    self.reached(latest)
                    candidate = latest - spec.delay
                    if candidate > self.wm[part]:
                        self.wm[part] = candidate
            if tracked:
                # Whatever the partition delivered in this batch (to any bucket),
                # it is reading again, unless its source said it is idle since.
                self.idle[part] = marked.idle_since
                if marked.eof:
                    self.wm[part] = _DONE
        if window is not None and not isinstance(window, Count):
            mark = self.watermark()
            self._close(mark, out, row)
            self._early(now, out, row)
            if spec.event_time:
                self.report(mark, self.lag, out)
                if self.newest != _NEVER:
                    spec.counters.marks[self.mark_key] = (mark, self.newest)
        return out, False

    def _early(self, now: float, out: list[tuple[str, Any]], row: list[int]) -> None:
        """Emit the current value of each open window of a key that changed, when due."""
        every = self.spec.every
        if every is None or not self.dirty or now < self.early_at:
            return
        dirty = self.dirty
        finish = self.spec.finish
        if isinstance(self.spec.window, Session):
            found = [(k, s[0], s[1], s[2]) for k in dirty for s in self.wins.get(k, ())]
        else:
            ends = {(k, st): end for end, k, st in self.heap if k in dirty}
            found = [(k, st, ends[(k, st)], a) for (k, st), a in self.wins.items() if k in dirty]
        paned = self.spec.paned
        for key, start, end, accs in found:
            self.versions[(key, start)] = n = self.versions.get((key, start), 0) + 1
            try:
                if paned:
                    accs = self._window_accs(key, start, end, accs)
                result = finish(key, start, end, accs, False, f"/early-{n}")
            except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                self._failed_result(key, start, exc, out, row)
                continue
            self.note(out, self.spec.notes, result, end - _TICK, dated=True)
            out.append(("r", result))
            row[_CREATED] += 1
            row[_OUT] += 1
            row[_EARLY] += 1
        dirty.clear()
        self.early_at = now + every

    def _timed(
        self,
        window: Window,
        records: list[Any],
        out: list[tuple[str, Any]],
        row: list[int],
        part: str,
        wm: float | None = None,
    ) -> None:
        """Add records to their windows; each window whose end ``wm`` has passed refuses them.

        An event joins every window of its own that is still open for its
        partition's watermark (or where windows were already closed) and is
        late only when none is. That depends only on the partition's own
        order, so lateness is the same whatever the worker count; the minimum
        over partitions still decides when windows close.
        """
        spec = self.spec
        add = spec.add
        wins = self.wins
        if wm is None and spec.event_time:
            own = self.wm.get(part, _NEVER)
            wm = own if own > self.closed else self.closed
        elif wm is None:
            wm = _NEVER  # processing time: never late
        late = 0
        if isinstance(window, Tumbling):
            # The hot loop: one dict lookup and the generated adder per event.
            heap = self.heap
            get = wins.get
            opened = 0
            # The window of the event before (times come mostly in order): an
            # event ``lo <= ts < hi`` is in it too, without rounding (`_inside`).
            lo = hi = start = end = 0.0
            for key, ts, event in records:
                if not lo <= ts < hi:
                    start, end, lo, hi = tumbling_of(window, ts)
                if ts < wm and end <= wm:
                    late += 1
                    self._late(event, ts, wm, out, row)
                    continue
                accs = get((key, start))
                try:
                    if accs is None:
                        fresh = spec.fresh()
                        add(fresh, event, ts)
                        wins[(key, start)] = fresh
                        heapq.heappush(heap, (end, key, start))
                        opened += 1
                    else:
                        add(accs, event, ts)  # all or nothing: a failure changes nothing
                except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                    late += 1
                    self._failed(event, ts, exc, out, row)
            row[_OPEN] += opened
            row[_AGG] += len(records) - late
            return
        if isinstance(window, Sliding):
            if spec.paned:
                self._paned(window, records, out, row, wm)
            else:
                self._sliding(window, records, out, row, wm)
            return
        for key, ts, event in records:
            if ts < wm and window.last_end(ts) <= wm:
                late += 1
                self._late(event, ts, wm, out, row)
                continue
            try:
                assert isinstance(window, Session)
                self._session(window, key, ts, event, row)
            except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                late += 1
                self._failed(event, ts, exc, out, row)
        row[_AGG] += len(records) - late

    def _sliding(
        self,
        window: Sliding,
        records: list[Any],
        out: list[tuple[str, Any]],
        row: list[int],
        wm: float,
    ) -> None:
        """Add records to every window of theirs whose end ``wm`` has not passed.

        Every such window takes the event, or none does (the event is then a
        dead letter): `make_spreader`. A window the event opens is kept only
        once the event is in it. Windows are what `Sliding.assign` gives,
        computed here in whole microseconds (the hot loop of sliding windows).
        """
        spec = self.spec
        spread = spec.spread
        fresh_accs = spec.fresh
        get = self.wins.get
        late = opened = 0
        size_us = window.size_us
        every_us = window.every_us
        off = window.offset_us
        # Where the size is a multiple of the step, every time between two
        # window starts is in the same windows: those of the event before, if
        # it is ``lo <= ts < hi`` (see `_inside`). Otherwise each is worked out.
        steady = size_us % every_us == 0
        lo = hi = 0.0
        spans: list[tuple[float, float]] = []  # (start, end), the latest first
        for key, ts, event in records:
            if not lo <= ts < hi:
                t = round(ts * 1_000_000)
                s = t - (t - off) % every_us  # the latest window's start
                spans = [
                    (start_us / 1_000_000, (start_us + size_us) / 1_000_000)
                    for start_us in range(s, t - size_us, -every_us)
                ]
                if steady:
                    lo, hi = _inside(s, s + every_us)
            if ts < wm and spans and spans[0][1] <= wm:
                late += 1
                self._late(event, ts, wm, out, row)
                continue
            held: list[list[Any]] = []
            # (start, end, accs, whether the window is open already: paned, see `panes`)
            fresh: list[tuple[float, float, list[Any], bool]] | None = None
            for start, end in spans:
                if end <= wm:
                    break  # closed for the watermark, as are the earlier ones
                accs = get((key, start), _MISSING)
                if accs is _MISSING or accs is None:
                    if fresh is None:
                        fresh = []
                    new = fresh_accs()
                    fresh.append((start, end, new, accs is None))
                    accs = new
                held.append(accs)
            try:
                spread(held, event, ts)
            except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                late += 1
                self._failed(event, ts, exc, out, row)
                continue
            if fresh is not None:
                wins = self.wins
                heap = self.heap
                for start, end, accs, held_open in fresh:
                    wins[(key, start)] = accs
                    if not held_open:
                        heapq.heappush(heap, (end, key, start))
                        opened += 1
        row[_OPEN] += opened
        row[_AGG] += len(records) - late

    def _paned(
        self,
        window: Sliding,
        records: list[Any],
        out: list[tuple[str, Any]],
        row: list[int],
        wm: float,
    ) -> None:
        """Add each record once, to its pane: the step of event time it is in.

        A window's result merges the panes it spans when it closes
        (`_window_accs`): an event costs one addition, not one per window.
        The windows a pane is in open with it. A record that some of its
        windows refuse (their end ``wm`` has passed) goes to the others
        alone, as `_sliding` adds it, and is late if all do.
        """
        spec = self.spec
        add = spec.add
        fresh = spec.fresh
        panes = self.panes
        wins = self.wins
        heap = self.heap
        size_us = window.size_us
        every_us = window.every_us
        off = window.offset_us
        late = aside = opened = 0
        lo = hi = pane = first_end = last_end = 0.0
        s = 0
        for record in records:
            key, ts, event = record
            if not lo <= ts < hi:
                t = round(ts * 1_000_000)
                s = t - (t - off) % every_us  # the pane's start, the latest window's
                pane = s / 1_000_000
                first_end = (s + every_us) / 1_000_000  # its earliest window's end
                last_end = (s + size_us) / 1_000_000
                lo, hi = _inside(s, s + every_us)
            if first_end <= wm:
                if last_end <= wm:
                    late += 1
                    self._late(event, ts, wm, out, row)
                else:  # in some of its windows only
                    aside += 1
                    self._sliding(window, [record], out, row, wm)
                continue
            mine = panes.get(key)
            accs = None if mine is None else mine.get(pane)
            try:
                if accs is None:
                    accs = fresh()
                    add(accs, event, ts)
                    if mine is None:
                        mine = panes[key] = {}
                    mine[pane] = accs
                    for start_us in range(s, s - size_us, -every_us):
                        start = start_us / 1_000_000
                        if (key, start) not in wins:
                            wins[(key, start)] = None
                            heapq.heappush(heap, ((start_us + size_us) / 1_000_000, key, start))
                            opened += 1
                else:
                    add(accs, event, ts)  # all or nothing: a failure changes nothing
            except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                late += 1
                self._failed(event, ts, exc, out, row)
        row[_OPEN] += opened
        row[_AGG] += len(records) - late - aside

    def _merge(
        self,
        partials: list[tuple[str, float, float, list[Any], list[str]]],
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """Merge windows aggregated before the exchange into this bucket's windows."""
        merge = self.spec.merge
        wins = self.wins
        get = wins.get
        heap = self.heap
        closed = self.closed
        opened = merged = 0
        for key, start, end, accs, ids in partials:
            if end <= closed:
                self._late_partial(key, start, end, ids, out, row)
                continue
            held = get((key, start))
            if held is None:
                wins[(key, start)] = accs
                heapq.heappush(heap, (end, key, start))
                opened += 1
            else:
                try:
                    merge(held, accs)  # all or nothing: a failure leaves the window as it was
                except Exception as exc:  # noqa: BLE001 - handed to the step's policy
                    self._failed_partial(key, start, ids, exc, out, row)
                    continue
            merged += len(ids)
        row[_OPEN] += opened
        row[_AGG] += merged

    def _dead(
        self,
        kind: str,
        error_type: str,
        message: str,
        payload: str,
        ts: float,
        function: str | None = None,
    ) -> tuple[str, DeadLetter]:
        """Make a dead letter of this step, tagged for the split after the step."""
        return dead_item(self.spec, kind, error_type, message, payload, ts, function)

    def _failed_partial(
        self,
        key: str,
        start: float,
        ids: list[str],
        exc: Exception,
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        """Apply the step's policy to a partial window the aggregators could not merge."""
        where = {"key": key, "start": _utc(start).isoformat(), "events": len(ids)}
        names = self._policy(exc, json.dumps(where), row, len(ids))
        if names is None:
            return
        for event_id in ids:
            payload = json.dumps({"id": event_id, **where}, sort_keys=True)
            message = (
                f"the aggregators ({names}) could not merge the partial window of key "
                f"{key!r} holding event {event_id!r} (aggregated before the key exchange; "
                f"the payload was not kept): {exc}"
            )
            out.append(
                self._dead("user_error", type(exc).__qualname__, message, payload, start, names)
            )

    def _failed_result(
        self, key: str, start: float, exc: Exception, out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        """Apply the step's policy to a closed window whose result could not be made."""
        payload = json.dumps({"key": key, "start": _utc(start).isoformat()}, sort_keys=True)
        names = self._policy(exc, payload, row)
        if names is not None:
            message = f"the result of the window of key {key!r} could not be made ({names}): {exc}"
            out.append(
                self._dead("user_error", type(exc).__qualname__, message, payload, start, names)
            )

    def _late_partial(
        self,
        key: str,
        start: float,
        end: float,
        ids: list[str],
        out: list[tuple[str, Any]],
        row: list[int],
    ) -> None:
        row[_DEAD] += len(ids)
        row[_LATE] += len(ids)
        for event_id in ids:
            payload = json.dumps(
                {"id": event_id, "key": key, "start": _utc(start).isoformat()}, sort_keys=True
            )
            message = (
                f"event {event_id!r} of key {key!r} was aggregated before the key exchange, "
                f"and its window [{_utc(start).isoformat()}, {_utc(end).isoformat()}) had "
                f"closed when it arrived (its source partition was idle past idle_timeout, or "
                f"the run resumed); the payload was not kept. Hint: aggregate(..., "
                f"combine=False) keeps late events whole"
            )
            out.append(self._dead("late", "LateEvent", message, payload, start))

    def _session(self, window: Session, key: str, ts: float, event: Any, row: list[int]) -> None:
        spec = self.spec
        sessions: list[list[Any]] | None = self.wins.get(key)
        if sessions is None:
            sessions = self.wins[key] = []
        start, end = ts, ts + window.gap
        lo, hi = overlapping(sessions, start, end)
        if hi - lo == 1:
            # The usual case: the event falls in (or extends) one session.
            session = sessions[lo]
            spec.add(session[2], event, ts)  # all or nothing
            if session[0] <= start and end <= session[1]:
                return  # its closing entry still stands
            moved = start < session[0]
            start, end = min(start, session[0]), max(end, session[1])
            if moved and self.versions:
                self._renumber(key, [session[0]], start)
            session[0], session[1] = start, end
            if not moved:
                return  # its closing entry moves on when it comes up (`pop_session`)
        else:
            accs = spec.fresh()
            spec.add(accs, event, ts)
            if lo == hi:
                sessions.insert(lo, [start, end, accs])
                row[_OPEN] += 1
            else:
                # The event bridges sessions: they and the event make one, all
                # or nothing (a merge that fails leaves every session as it was).
                parts = [*(s[2] for s in sessions[lo + 1 : hi]), accs]
                merged = sessions[lo][2].copy()
                for other in parts:
                    spec.merge_values(merged, other)
                for other in parts:
                    spec.merge_in_place(merged, other)
                start, end = min(start, sessions[lo][0]), max(end, sessions[hi - 1][1])
                if self.versions:
                    self._renumber(key, [s[0] for s in sessions[lo:hi]], start)
                sessions[lo:hi] = [[start, end, merged]]
                row[_OPEN] -= hi - lo - 1
        # The session closes one gap after its end: until the watermark is
        # there, an event behind it whose own gap reaches past it may still
        # extend the session, so waiting keeps the result the same whatever
        # the schedule.
        heapq.heappush(self.heap, (end + window.gap, key, start))

    def _renumber(self, key: str, starts: list[float], start: float) -> None:
        """Give a session that now starts at ``start`` the early results of those it was.

        A session whose start moved (or sessions merged into one) goes on
        numbering its early results after the highest of theirs.
        """
        versions = self.versions
        n = max(versions.pop((key, old), 0) for old in starts)
        if n:
            versions[(key, start)] = max(n, versions.get((key, start), 0))

    def _count(
        self, window: Count, records: list[Any], out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        spec = self.spec
        wins = self.wins
        failed = 0
        for key, ts, event in records:
            slot = wins.get(key)
            accs = spec.fresh() if slot is None else slot[3]
            if not self._take(accs, event, ts, out, row):
                failed += 1
                continue
            if slot is None:
                # The first event's id tells apart windows of a key that start at one time.
                slot = wins[key] = [0, ts, ts, accs, record_part(event)]
                row[_OPEN] += 1
            slot[0] += 1
            slot[1] = ts if ts < slot[1] else slot[1]
            slot[2] = ts if ts > slot[2] else slot[2]
            if slot[0] >= window.n:
                del wins[key]
                out.append(("r", self._count_result(key, slot)))
                row[_OUT] += 1
                row[_CREATED] += 1
                row[_OPEN] -= 1
        row[_AGG] += len(records) - failed

    def _count_result(self, key: str, slot: list[Any]) -> Any:
        """Make a count window's result: ``slot`` is ``[n, first time, last time, accs, first id]``.

        Its id ends with its first event's id (or its digest, for a record
        without one: `record_part`): windows of a key that start at one time
        (events of one second, or of one batch on processing time) have ids of
        their own. A slot from a snapshot of an earlier evflow holds no id.
        """
        first = slot[4] if len(slot) > 4 else None
        tag = "" if first is None else f"/{first}"
        return self.spec.finish(key, slot[1], slot[2], slot[3], tag=tag)

    def _running(
        self, records: list[Any], out: list[tuple[str, Any]], row: list[int], now: float
    ) -> None:
        spec = self.spec
        wins = self.wins
        ttl = spec.ttl
        failed = 0
        for key, ts, event in records:
            accs = wins.get(key)
            fresh = accs is None
            if accs is None:
                accs = spec.fresh()
            if not self._take(accs, event, ts, out, row):
                failed += 1
                continue
            if fresh:
                wins[key] = accs
                row[_OPEN] += 1
            if ttl is not None:
                self.expiry[key] = now + ttl
            if spec.emit == "running":
                out.append(("r", self._running_result(key, accs, record_part(event))))
                row[_OUT] += 1
                row[_CREATED] += 1
        row[_AGG] += len(records) - failed

    def _take(
        self, accs: list[Any], event: Any, ts: float, out: list[tuple[str, Any]], row: list[int]
    ) -> bool:
        """Add an event to ``accs`` (all or nothing); on failure apply the step's policy."""
        try:
            self.spec.add(accs, event, ts)
        except Exception as exc:  # noqa: BLE001 - handed to the step's policy
            self._failed(event, ts, exc, out, row)
            return False
        return True

    def _policy(self, exc: Exception, payload: str, row: list[int], n: int = 1) -> str | None:
        """Apply the step's policy to a failure that ``n`` events share.

        Returns the aggregators' names when dead letters are to be made, None
        when they were skipped; a halt raises.
        """
        spec = self.spec
        if spec.policy.mode == "skip":
            row[_SKIPPED] += n
            return None
        names = ", ".join(f"{a}={g.label}" for a, g in zip(spec.names, spec.aggs, strict=True))
        if spec.policy.mode == "halt":
            halted = PipelineHalted(spec.pipeline, spec.step, names, payload)
            halted.__cause__ = exc
            spec.counters.halt(halted)
        row[_DEAD] += n
        return names

    def _failed(
        self, event: Any, ts: float, exc: Exception, out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        """Apply the step's error policy to an event an aggregator could not take."""
        payload = payload_text(event)
        names = self._policy(exc, payload, row)
        if names is not None:
            why = str(exc)
            if isinstance(exc, KeyError) and event.__class__ is dict:
                why = f"the record has no key {exc.args[0]!r}"
            message = f"an aggregator ({names}) could not take the event: {why}"
            out.append(
                self._dead("user_error", type(exc).__qualname__, message, payload, ts, names)
            )

    def _late(
        self, event: Any, ts: float, wm: float, out: list[tuple[str, Any]], row: list[int]
    ) -> None:
        """Send on (or dead-letter) an event behind ``wm``, its partition's watermark."""
        spec = self.spec
        row[_LATE] += 1
        if spec.late_wanted:
            if spec.notes is not None:
                self.made(out, wm)  # judged after this step against what it was behind
            out.append(("l", event))
            row[_OUT] += 1
            return
        row[_DEAD] += 1
        message = (
            f"event time {_iso(ts)} is behind the watermark {_iso(wm)}; "
            f"write the step's .late stream to a sink to keep late events apart"
        )
        out.append(self._dead("late", "LateEvent", message, payload_text(event), ts))

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        """Close windows by wall-clock progress; expire idle running keys."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        now = time.time()
        if spec.window is None:
            for key, due in list(self.expiry.items()):
                if due <= now:
                    del self.expiry[key]
                    accs = self.wins.pop(key)
                    row[_OPEN] -= 1
                    if spec.emit == "final":
                        # The key may come back and expire again: each final has its own id.
                        out.append(("r", self._running_result(key, accs, f"until-{due:.6f}")))
                        row[_OUT] += 1
                        row[_CREATED] += 1
        elif not isinstance(spec.window, Count):
            mark = self.watermark(now)
            self._close(mark, out, row)
            self._early(now, out, row)
            if spec.event_time:
                self.report(mark, self.lag, out)
        return out, False

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        """Close every window and emit final aggregates: the input ended."""
        spec = self.spec
        row = spec.counters.table()[spec.row]
        out: list[tuple[str, Any]] = []
        window = spec.window
        if window is None:
            for key, accs in self.wins.items():
                row[_OPEN] -= 1
                if spec.emit == "final":
                    out.append(("r", self._running_result(key, accs)))
                    row[_OUT] += 1
                    row[_CREATED] += 1
            self.wins.clear()
        elif isinstance(window, Count):
            for key, slot in self.wins.items():
                out.append(("r", self._count_result(key, slot)))
                row[_OUT] += 1
                row[_CREATED] += 1
                row[_OPEN] -= 1
            self.wins.clear()
        else:
            self._close(_DONE, out, row)
            if spec.event_time:
                out.append(("w", _DONE))
        return out, True

    def notify_at(self) -> datetime | None:
        """When wall-clock progress could next close a window (or expire a key)."""
        spec = self.spec
        if spec.window is None:
            if not self.expiry:
                return None
            return wake_at(min(self.expiry.values()))
        if isinstance(spec.window, Count) or not self.heap:
            return None
        early = wake_at(self.early_at) if self.dirty else None
        end = self.heap[0][0]
        due = wake_at(end) if not spec.event_time else self.wall_due(end)
        if early is None or (due is not None and due < early):
            return due
        return early

    def snapshot(self) -> dict[str, Any]:
        """State to resume from: watermarks, open windows."""
        snap = {
            "wm": dict(self.wm),
            "closed": self.closed,
            "wins": self.wins,
            "panes": self.panes,
            "heap": list(self.heap),
            "newest": self.newest,
            "layout": BUCKET_LAYOUT,
            "sessions": "end+gap",
            "versions": self.versions,
            "expiry": self.expiry,
            "shape": self.spec.shape,
        }
        check_state(self.spec.step, snap)
        return snap
