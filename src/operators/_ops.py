"""The stateless operations of a stage: filter, map, flat_map, inspect, key checks, forward.

Each runs over a whole list of records; a failing record is taken out and
handed to the step's error policy while the rest of the list goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from operators._deadletter import ErrorKind
from operators._owned import own
from operators._policy import ErrorPolicy
from operators._stage import (
    _CREATED,
    _FILTERED,
    _IN,
    _OUT,
    _UNROUTED,
    Node,
    StageOp,
    _fan_out,
    _Run,
    describe_function,
)

__all__ = [
    "FilterOp",
    "FlatMapOp",
    "ForwardOp",
    "InspectOp",
    "IsInstance",
    "KeyCheckOp",
    "MapOp",
    "check_key",
]


class IsInstance:
    """The predicate of a class filter (``filter(View)``); stages run it inline.

    >>> IsInstance(int)(3), IsInstance(int).__name__
    (True, 'is_int')
    """

    def __init__(self, cls: type) -> None:
        """Match instances of ``cls``."""
        self.cls = cls
        self.__name__ = f"is_{cls.__name__}"
        self.__qualname__ = self.__name__

    def __call__(self, item: Any) -> bool:
        """Whether ``item`` is an instance of the class."""
        return isinstance(item, self.cls)


class SubclassCheck(dict[type, bool]):
    """Whether each class met is ``cls`` or a subclass, decided once per class.

    Event classes check instances through their metaclass, which is slow
    to ask for every record.
    """

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def __missing__(self, t: type) -> bool:
        wanted = self[t] = issubclass(t, self.cls)
        return wanted


class FilterOp(StageOp):
    """Keep the records for which the predicate is true."""

    kind = "filter"
    #: For a class filter: whether each class met passes (a plain dict, which
    #: a comprehension reads faster than a dict with ``__missing__``).
    wanted: dict[type, bool] | None = None

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Filter a list."""
        fn = self.fn
        if isinstance(fn, IsInstance):
            # A class test cannot fail: one comprehension, a lookup per record.
            wanted = self.wanted
            if wanted is None:
                wanted = self.wanted = {}
            try:
                kept_ = [x for x in items if wanted[type(x)]]
            except KeyError:  # a class not met before: decided once, then again
                for cls in set(map(type, items)) - wanted.keys():
                    wanted[cls] = issubclass(cls, fn.cls)
                kept_ = [x for x in items if wanted[type(x)]]
            row[_FILTERED] += len(items) - len(kept_)
            return kept_
        kept: list[Any] = []
        append = kept.append
        failed = 0
        it = iter(items)
        while True:
            try:
                for x in it:
                    if fn(x):
                        append(x)
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, value = self.recover(x, exc, run, row)
                if not ok:
                    failed += 1
                elif value:
                    append(x)
        row[_FILTERED] += len(items) - len(kept) - failed
        return kept


class MapOp(StageOp):
    """Replace each record with the function's result."""

    kind = "map"

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Map a list."""
        fn = self.fn
        result: list[Any] = []
        append = result.append
        it = iter(items)
        while True:
            try:
                for x in it:
                    append(fn(x))
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, value = self.recover(x, exc, run, row)
                if ok:
                    append(value)
                elif run.made is not None:
                    run.dropped.append(len(result) + len(run.dropped))  # x's place
        return result


class FlatMapOp(StageOp):
    """Replace each record with zero or more records."""

    kind = "flat_map"
    keeps_made = False

    def call(self, item: Any) -> Any:
        """Call the function and materialise what it returns (some records, never one).

        Text, bytes and a mapping iterate as characters, numbers and keys: a
        function that returns one is taken to have meant one record, and it is
        a `TypeError` (a dead letter) rather than a record per character.
        """
        made = self.fn(item)
        if made.__class__ is not list and (
            made is None or isinstance(made, str | bytes | bytearray | Mapping)
        ):
            raise TypeError(_not_many(made))
        return list(made)

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Flat-map a list; an input giving nothing counts as filtered."""
        call = self.call
        result: list[Any] = []
        extend = result.extend
        empty = 0
        failed = 0
        it = iter(items)
        while True:
            try:
                for x in it:
                    values = call(x)
                    if values:
                        extend(values)
                    else:
                        empty += 1
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, values = self.recover(x, exc, run, row)
                if not ok:
                    failed += 1
                elif values:
                    extend(values)
                else:
                    empty += 1
        row[_FILTERED] += empty
        # Each input that gave k > 1 records created k - 1 new ones.
        row[_CREATED] += len(result) - (len(items) - empty - failed)
        return result


def _not_many(made: Any) -> str:
    """Say why what a flat_map function returned is no collection of records."""
    if made is None:
        return (
            "the function returned None, not the records to hand on. Hint: return a list "
            "(an empty one for none), or yield them"
        )
    parts = "keys" if isinstance(made, Mapping) else "characters"
    if isinstance(made, bytes | bytearray):
        parts = "numbers (one per byte)"
    return (
        f"the function returned a {type(made).__name__}, which would be handed on as its "
        f"{parts}, one record each. Hint: return a list of records ([value] for one), or "
        f"use map for one record per record"
    )


class InspectOp(StageOp):
    """Call a function on each record for its side effect; pass records on."""

    kind = "inspect"

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Call ``call`` on each record and keep the records whose call did not fail."""
        call = self.call
        passed: list[Any] = []
        append = passed.append
        it = iter(items)
        while True:
            try:
                for x in it:
                    call(x)
                    append(x)
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, _ = self.recover(x, exc, run, row)
                if ok:
                    append(x)
        return passed


class KeyCheckOp(InspectOp):
    """Compute each record's key, which must be a string; pass records on."""

    kind = "key_by"
    error_kind: ErrorKind = "key_error"

    def call(self, item: Any) -> Any:
        """Compute and check one key."""
        return check_key(self.fn(item), self.step, self.kind, self.function)

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Key each record once; a keyed step after this one takes the keys as they are."""
        row = run.table[self.index]
        row[_IN] += len(items)
        key_of = self.fn
        same = getattr(key_of, "same_key", None)
        made = run.made
        if made is not None:
            run.dropped = []
        if same is not None:  # one key for every record (a window over the whole stream)
            row[_OUT] += len(items)
            _fan_out(self.nexts, items, run, out, row, keys=(key_of, [same] * len(items)))
            return
        passed: list[Any] = []
        keys: list[str] = []
        it = iter(items)
        while True:
            try:
                for x in it:
                    key = key_of(x)
                    if key.__class__ is not str:
                        key = self.call(x)  # raises the key error, with its message
                    keys.append(key)
                    passed.append(x)
                break
            except Exception as exc:  # noqa: BLE001 - handed to the policy
                ok, key = self.recover(x, exc, run, row)
                if ok:
                    keys.append(key)
                    passed.append(x)
        row[_OUT] += len(passed)
        if made is not None:
            run.made = self.lineage(items, passed, made, run)
        _fan_out(self.nexts, passed, run, out, row, keys=(key_of, keys))


def check_key(key: Any, step: str, kind: str, function: str) -> str:
    """Return ``key`` if it is a string; else raise, naming the step and the function.

    >>> check_key("u1", "by_user", "key_by", "<user_of>")
    'u1'
    """
    if not isinstance(key, str):
        msg = (
            f"step {step!r} ({kind}): key function {function} must return str; got "
            f"{type(key).__name__} {key!r}. Hint: convert it, for example "
            f"key_by(lambda e: str(e.user_id))."
        )
        raise TypeError(msg)
    return key


def _place(
    x: Any, hits: list[int], lists: list[list[Any]], rest: list[Any], row: list[int]
) -> None:
    """Put a record on every route it matched (a copy past the first: `own`), or aside."""
    if not hits:
        rest.append(x)
    elif len(hits) == 1:
        lists[hits[0]].append(x)
    else:
        lists[hits[0]].append(x)
        for i in hits[1:]:
            lists[i].append(own(x))
        row[_CREATED] += len(hits) - 1


class _RouteError(Exception):
    def __init__(self, item: Any, error: Exception) -> None:
        self.item = item
        self.error = error


class ForwardOp(StageOp):
    """Route each record to named branches by predicates.

    ``mode="first"`` sends a record to the first route whose predicate holds;
    ``mode="all"`` copies it to every such route. Records matching none go
    to the ``otherwise`` branch when there is one, or are counted unrouted.
    """

    kind = "forward"
    keeps_made = False  # not followed: a stage with it runs each making time apart

    def __init__(
        self,
        step: str,
        index: int,
        predicates: Sequence[Callable[[Any], bool]],
        policy: ErrorPolicy,
        *,
        mode: str,
        branches: Sequence[Sequence[Node]],
        otherwise: Sequence[Node] | None,
    ) -> None:
        """Make a router over ``predicates`` with one branch each."""
        super().__init__(step, index, predicates, policy)
        self.predicates = list(predicates)
        self.mode = mode
        self.branches = [list(b) for b in branches]
        self.otherwise = None if otherwise is None else list(otherwise)
        self.function = ", ".join(describe_function(p) for p in self.predicates)

    def call(self, item: Any) -> Any:
        """Return the indexes of the routes the record goes to."""
        hits = []
        for i, pred in enumerate(self.predicates):
            if pred(item):
                hits.append(i)
                if self.mode == "first":
                    break
        return hits

    def _first(self, it: Iterator[Any], lists: list[list[Any]], rest: list[Any]) -> None:
        x = None
        try:
            if len(self.predicates) == 1:
                pred = self.predicates[0]
                hit = lists[0].append
                miss = rest.append
                for x in it:
                    if pred(x):
                        hit(x)
                    else:
                        miss(x)
                return
            pairs = [(pred, lst.append) for pred, lst in zip(self.predicates, lists, strict=True)]
            miss = rest.append
            for x in it:
                for pred, hit in pairs:
                    if pred(x):
                        hit(x)
                        break
                else:
                    miss(x)
        except Exception as exc:
            raise _RouteError(x, exc) from exc

    def _all(
        self, it: Iterator[Any], lists: list[list[Any]], rest: list[Any], row: list[int]
    ) -> None:
        x = None
        try:
            for x in it:
                _place(x, self.call(x), lists, rest, row)
        except Exception as exc:
            raise _RouteError(x, exc) from exc

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Split a list over the branches."""
        row = run.table[self.index]
        row[_IN] += len(items)
        lists: list[list[Any]] = [[] for _ in self.predicates]
        rest: list[Any] = []
        it = iter(items)
        while True:
            try:
                if self.mode == "first":
                    self._first(it, lists, rest)
                else:
                    self._all(it, lists, rest, row)
                break
            except _RouteError as failure:
                x = failure.item
                ok, hits = self.recover(x, failure.error, run, row)
                if ok:
                    _place(x, hits, lists, rest, row)
        routed = sum(len(lst) for lst in lists)
        row[_OUT] += routed
        for branch, lst in zip(self.branches, lists, strict=True):
            _fan_out(branch, lst, run, out, row)
        if self.otherwise is None:
            row[_UNROUTED] += len(rest)
        else:
            row[_OUT] += len(rest)
            _fan_out(self.otherwise, rest, run, out, row)

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Unused: forward overrides `push`."""
        raise NotImplementedError
