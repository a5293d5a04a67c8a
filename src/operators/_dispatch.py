"""dispatch: each event goes to the handlers registered for its type.

A `Dispatcher` resolves an event's handlers with one dictionary lookup per
event class (the nearest registered base class wins, then the type name; the
classic event bus's dispatch takes every registered class and the name), so
the cost per event does not grow with the number of registered types. A
handler is a function or an object with ``handle``; what it returns flows on
(nothing, one value, or several as a list, set, generator or other iterator;
a tuple is one value). ``async def`` handlers of a
batch run concurrently, up to a limit, and their results keep the events'
order. `stateful` handlers keep one state per key (on keyed streams), shared
by all the stateful handlers of the step and kept in its snapshots.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import inspect
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bytewax.operators import StatefulBatchLogic

from operators._deadletter import DeadLetter, explain, payload_text
from operators._event import Event
from operators._keying import BUCKET_LAYOUT, check_layout
from operators._ops import SubclassCheck
from operators._owned import own, owned
from operators._pickles import check_state
from operators._policy import ErrorPolicy, PipelineHalted
from operators._stage import (
    COUNTER_FIELDS,
    Counters,
    Node,
    StageOp,
    _fan_out,
    _Run,
    check_arity,
    describe_function,
)
from operators._windowing import wake_at

__all__ = [
    "Dispatch",
    "DispatchLogic",
    "DispatchOp",
    "Dispatcher",
    "HandlerRef",
    "Stateful",
    "listed",
    "stateful",
]

_IN, _OUT, _DEAD, _SKIPPED, _CREATED, _HANDLED, _EXPIRED = (
    COUNTER_FIELDS.index(f)
    for f in ("in", "out", "dead", "skipped", "created", "handled", "expired")
)
_MISS = object()
_ONE = frozenset({str, int, float, tuple, dict, bytes, bool})


T = TypeVar("T")


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` gives to its end, from synchronous code.

    Where an event loop already runs in this thread (a notebook's kernel),
    the coroutine runs on a thread of its own with its own loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="evflow-async") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class Stateful:
    """A handler with per-key state: ``fn(state, event) -> (new_state, output)``."""

    def __init__(
        self,
        fn: Callable[[Any, Any], tuple[Any, Any]],
        initial: Callable[[], Any],
        ttl: float | None = None,
    ):
        """Wrap ``fn``; ``initial()`` makes a key's first state; ``ttl`` in seconds."""
        if not callable(fn) or not callable(initial):
            msg = (
                f"stateful(fn, initial=...) needs callables; got {fn!r} and {initial!r}. "
                f"Hint: stateful(lambda state, e: (state, e), initial=dict)."
            )
            raise TypeError(msg)
        hint = "stateful(lambda state, e: (state + 1, e), initial=int)."
        check_arity(fn, 2, "stateful", "fn", "the key's state and the event", hint)
        check_arity(initial, 0, "stateful", "initial", "", hint)
        if ttl is not None and not (isinstance(ttl, int | float) and ttl > 0):
            msg = f"stateful(..., ttl=...) must be a positive number of seconds; got {ttl!r}."
            raise ValueError(msg)
        self.fn = fn
        self.initial = initial
        self.ttl = None if ttl is None else float(ttl)
        self.__name__ = getattr(fn, "__name__", "stateful")


def stateful(
    fn: Callable[[Any, Any], tuple[Any, Any]],
    *,
    initial: Callable[[], Any] = dict,
    ttl: timedelta | float | None = None,
) -> Stateful:
    """Make a handler that keeps state per key (keyed streams only).

    ``fn(state, event)`` returns ``(new_state, output)``. Each key has one
    state, shared by the step's stateful handlers (an order's handlers all see
    the order), made by the first handler's ``initial()``; it lives in the
    dispatch step and is saved in its snapshots, not in globals. With ``ttl``
    a key's state is dropped once no event of the key has come for that long
    (wall clock; the step's shortest ttl applies); dropped states, and those
    left when a bounded input ends, are counted as ``expired``.

    >>> count = stateful(lambda n, e: (n + 1, n + 1), initial=int)
    >>> count.fn(0, "event")
    (1, 1)
    """
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    return Stateful(fn, initial, seconds)


class HandlerRef:
    """One registered handler: its callable, name, and how to call it."""

    def __init__(self, handler: Any, index: int) -> None:
        """Describe ``handler`` (a function, an object with ``handle``, or `Stateful`)."""
        self.index = index
        self.stateful = isinstance(handler, Stateful)
        self.ttl: float | None = None
        if self.stateful:
            self.fn: Callable[..., Any] = handler.fn
            self.initial: Callable[[], Any] = handler.initial
            self.ttl = handler.ttl
        elif callable(handler) and not hasattr(handler, "handle"):
            self.fn = handler
        else:
            self.fn = handler.handle
        self.name = describe_function(self.fn)
        self.is_async = inspect.iscoroutinefunction(self.fn) or inspect.isasyncgenfunction(self.fn)

    async def awaited(self, event: Any) -> Any:
        """Await an async handler's result: an async generator's values are a list."""
        made = self.fn(event)
        if inspect.isasyncgen(made):
            return [value async for value in made]
        return listed(await made)


def _single(value: Any) -> bool:
    """Whether a handler's result is one value: lists, sets and iterators are many.

    A tuple is one value (a record), as are strings, dicts and events.
    """
    return not isinstance(value, list | set | frozenset | Iterator)


def _state_and_output(handler: HandlerRef, returned: Any) -> tuple[Any, Any]:
    """Take a stateful handler's ``(new state, output)``; say so when it returned something else."""
    if isinstance(returned, tuple | list) and len(returned) == 2:
        return returned[0], returned[1]
    shown = repr(returned)
    msg = (
        f"stateful handler {handler.name} returned {type(returned).__name__} "
        f"{shown if len(shown) <= 60 else shown[:59] + '...'}, not (new state, output). "
        f"Hint: return (new_state, output); (new_state, None) hands nothing on."
    )
    raise TypeError(msg)


def listed(value: Any) -> Any:
    """Run a handler's iterator (a generator) to its end, where its exceptions are caught."""
    return list(value) if isinstance(value, Iterator) else value


class Dispatcher:
    """Find an event's handlers: by nearest registered class, then by type name.

    With ``every=True`` (the classic event bus) an event goes to the handlers
    of every registered class it is an instance of, nearest first, then to
    those of its type name; the default only when none is registered.
    """

    def __init__(
        self,
        table: Mapping[type | str, Sequence[HandlerRef]],
        default: Sequence[HandlerRef],
        *,
        every: bool = False,
    ) -> None:
        """Index the handlers by class and by type name."""
        self.by_class = {k: list(v) for k, v in table.items() if isinstance(k, type)}
        self.by_name = {k: list(v) for k, v in table.items() if isinstance(k, str)}
        self.default = list(default)
        self.every = every
        self.cache: dict[type, list[HandlerRef]] = {}

    def handlers_for(self, event: Any) -> list[HandlerRef]:
        """Return the handlers of ``event`` (empty: unhandled)."""
        found = self.cache.get(type(event), _MISS)
        if found is _MISS:
            return self._resolve(event)
        return found  # type: ignore[return-value]

    def _resolve(self, event: Any) -> list[HandlerRef]:
        cls = type(event)
        found: list[HandlerRef] = []
        for base in cls.__mro__:
            handlers = self.by_class.get(base)
            if handlers is not None:
                found += handlers
                if not self.every:
                    break
        if found and not self.every:
            self.cache[cls] = found
            return found
        get_type = getattr(event, "get_type", None)
        if self.by_name and get_type is not None:
            try:
                name = get_type()
            except Exception as exc:  # noqa: BLE001 - the step's policy decides
                return [_failed_lookup(get_type, exc)]
            found += self.by_name.get(name, [])
            # An evflow event's type is fixed by its class; a plain object's
            # get_type() may depend on the instance, so it is asked each time.
            if not (isinstance(event, Event) and type(event).get_type is Event.get_type):
                return found or self.default
        found = found or self.default
        self.cache[cls] = found
        return found


def _failed_lookup(get_type: Callable[[], Any], error: Exception) -> HandlerRef:
    """Return a handler raising what the event's ``get_type()`` raised: the policy takes it."""

    def raises(event: Any) -> Any:
        raise error

    ref = HandlerRef(raises, -1)
    ref.name = describe_function(get_type)
    return ref


class Dispatch:
    """Deliver events to their handlers, with the step's error policy."""

    def __init__(
        self,
        pipeline: str,
        step: str,
        dispatcher: Dispatcher,
        policy: ErrorPolicy,
        concurrency: int,
        out: type[Any] | None = None,
    ) -> None:
        """Set up delivery for step ``step``; ``out`` is the class results must have."""
        self.pipeline = pipeline
        self.step = step
        self.dispatcher = dispatcher
        self.policy = policy
        self.concurrency = concurrency
        self.out = out
        #: Whether each class of result met is ``out`` (or a subclass).
        self.fits = None if out is None else SubclassCheck(out)
        refs = [h for hs in dispatcher.by_class.values() for h in hs]
        refs += [h for hs in dispatcher.by_name.values() for h in hs] + dispatcher.default
        self.has_async = any(h.is_async for h in refs)
        self.has_stateful = any(h.stateful for h in refs)
        ttls = [h.ttl for h in refs if h.ttl is not None]
        #: Seconds (wall clock) a key's state lives after its last event.
        self.ttl = min(ttls) if ttls else None

    def run(
        self,
        events: list[Any],
        keys: list[str] | None,
        row: list[int],
        dead: list[DeadLetter],
        states: dict[str, Any] | None,
    ) -> list[Any]:
        """Deliver events (with their keys, if keyed); return the results, in order."""
        if not self.has_async and not self.has_stateful:
            results = self._run_plain(events, row, dead)
        else:
            pairs = (
                zip(keys, events, strict=True) if keys is not None else ((None, e) for e in events)
            )
            results = self._run_general(pairs, row, dead, states)
        if self.fits is not None:
            return self._typed(results, self.fits, row, dead)
        return results

    def _typed(
        self, results: list[Any], fits: SubclassCheck, row: list[int], dead: list[DeadLetter]
    ) -> list[Any]:
        """Keep the results of the step's ``out`` class; the others are dead letters."""
        kept = [r for r in results if fits[type(r)]]
        if len(kept) == len(results):
            return results
        cls = fits.cls
        for value in results:
            if not fits[type(value)]:
                row[_OUT] -= 1
                row[_DEAD] += 1
                message = (
                    f"a handler returned {type(value).__name__}, not {cls.__name__} "
                    f"(dispatch(..., out={cls.__name__}))"
                )
                dead.append(self._letter(value, "user_error", "TypeError", message, None, 1))
        return kept

    def _run_plain(self, events: list[Any], row: list[int], dead: list[DeadLetter]) -> list[Any]:
        """Deliver to plain handlers, called in place: the common case, kept tight."""
        out: list[Any] = []
        append = out.append
        cached = self.dispatcher.cache.get
        resolve = self.dispatcher._resolve
        handled = created = emitted = 0
        for event in events:
            handlers = cached(type(event))
            if handlers is None:
                handlers = resolve(event)
            if len(handlers) == 1:
                handler = handlers[0]
                try:
                    value = handler.fn(event)
                    one = value is None or value.__class__ in _ONE or _single(value)
                    if not one:
                        value = list(value)  # a generator runs here, under the policy
                except Exception as exc:  # noqa: BLE001 - the policy decides
                    ok, value = self._call(handler, None, event, None, row, dead, exc)
                    if ok:
                        self._emit(value, out, row)
                    continue
                if value is None:
                    handled += 1
                elif one:
                    append(value)
                    emitted += 1
                else:
                    self._emit(value, out, row)
                continue
            if not handlers:
                self._unhandled(event, row, dead)
                continue
            created += len(handlers) - 1
            last = len(handlers) - 1
            for i, handler in enumerate(handlers):
                # Each handler but the last gets its own copy of a mutable event.
                mine = event if i == last else own(event)
                ok, value = self._call(handler, None, mine, None, row, dead)
                if ok:
                    self._emit(value, out, row)
        row[_IN] += len(events)
        row[_HANDLED] += handled
        row[_OUT] += emitted
        row[_CREATED] += created
        return out

    def _run_general(
        self,
        records: Iterable[tuple[str | None, Any]],
        row: list[int],
        dead: list[DeadLetter],
        states: dict[str, Any] | None,
    ) -> list[Any]:
        out: list[Any] = []
        waiting: list[tuple[list[Any], HandlerRef, Any, Any]] = []
        slots: list[Any] = []  # with async handlers: results per delivery, in order
        for key, event in records:
            row[_IN] += 1
            handlers = self.dispatcher.handlers_for(event)
            if not handlers:
                self._unhandled(event, row, dead)
                continue
            if len(handlers) > 1:
                row[_CREATED] += len(handlers) - 1
            last = len(handlers) - 1
            for i, handler in enumerate(handlers):
                mine = event if i == last else own(event)
                if self.has_async:
                    slot: list[Any] = []
                    slots.append(slot)
                    if handler.is_async:
                        waiting.append((slot, handler, key, mine))
                        continue
                    target = slot
                else:
                    target = out
                ok, value = self._call(handler, key, mine, states, row, dead)
                if ok:
                    self._emit(value, target, row)
        if self.has_async:
            self._await(waiting, row, dead)
            for slot in slots:
                out.extend(slot)
        return out

    def _call(
        self,
        handler: HandlerRef,
        key: str | None,
        event: Any,
        states: dict[str, Any] | None,
        row: list[int],
        dead: list[DeadLetter],
        first_error: Exception | None = None,
    ) -> tuple[bool, Any]:
        policy = self.policy
        attempts = 0
        error = first_error
        tries = policy.attempts if policy.mode == "retry" else 1
        culprit = handler.name  # the function that raised: the handler, or its initial
        while attempts < tries:
            if attempts and policy.backoff:
                time.sleep(policy.backoff * 2 ** (attempts - 1))
            attempts += 1
            if error is not None and attempts == 1:
                continue  # the first attempt already failed (async)
            try:
                if handler.stateful:
                    assert states is not None and key is not None
                    if key in states:
                        state = states[key]
                    else:
                        culprit = describe_function(handler.initial)
                        state = own(handler.initial())  # each key's own (see _process)
                        culprit = handler.name
                    new_state, value = _state_and_output(handler, handler.fn(state, event))
                    value = listed(value)  # before the state moves on: it may raise
                    states[key] = new_state
                    # What flows on is as it is now: not the state later calls change.
                    return True, owned(value) if value.__class__ is list else own(value)
                if handler.is_async:
                    return True, run_async(lambda: handler.awaited(event))
                return True, listed(handler.fn(event))
            except Exception as exc:  # noqa: BLE001 - the policy decides
                error = exc
        assert error is not None
        if policy.mode == "skip":
            row[_SKIPPED] += 1
            return False, None
        if policy.mode == "halt":
            raise PipelineHalted(self.pipeline, self.step, culprit, payload_text(event)) from error
        row[_DEAD] += 1
        dead.append(
            self._letter(
                event, "user_error", type(error).__qualname__, explain(error), culprit, attempts
            )
        )
        return False, None

    def _emit(self, value: Any, target: list[Any], row: list[int]) -> None:
        if value is None:
            row[_HANDLED] += 1
        elif _single(value):
            target.append(value)
            row[_OUT] += 1
        else:
            values = list(value)
            if not values:
                row[_HANDLED] += 1
                return
            target.extend(values)
            row[_OUT] += len(values)
            row[_CREATED] += len(values) - 1

    def _await(
        self,
        waiting: list[tuple[list[Any], HandlerRef, Any, Any]],
        row: list[int],
        dead: list[DeadLetter],
    ) -> None:
        if not waiting:
            return

        async def gather() -> list[Any]:
            limit = asyncio.Semaphore(self.concurrency)

            async def one(handler: HandlerRef, event: Any) -> Any:
                async with limit:
                    return await handler.awaited(event)

            return await asyncio.gather(
                *(one(h, e) for _, h, _, e in waiting), return_exceptions=True
            )

        results = run_async(gather)
        for (slot, handler, key, event), result in zip(waiting, results, strict=True):
            if isinstance(result, Exception):
                ok, value = self._call(handler, key, event, None, row, dead, first_error=result)
            else:
                ok, value = True, result
            if ok:
                self._emit(value, slot, row)

    def _unhandled(self, event: Any, row: list[int], dead: list[DeadLetter]) -> None:
        row[_DEAD] += 1
        message = f"no handler for {type(event).__name__}"
        get_type = getattr(event, "get_type", None)
        if self.dispatcher.by_name and callable(get_type):
            with contextlib.suppress(Exception):  # the letter is told without it
                message += f" (type name {get_type()!r})"
        dead.append(self._letter(event, "unhandled", "UnhandledEvent", message, None, 1))

    def _letter(
        self,
        event: Any,
        kind: Any,
        error_type: str,
        message: str,
        function: str | None,
        attempts: int,
    ) -> DeadLetter:
        return DeadLetter.build(
            pipeline=self.pipeline,
            step=self.step,
            kind=kind,
            error_type=error_type,
            message=message,
            function=function,
            payload=payload_text(event),
            event_time=getattr(event, "time", None),
            attempts=attempts,
        )


class DispatchOp(StageOp):
    """dispatch inside a stage (unkeyed streams: no state, no exchange)."""

    kind = "dispatch"
    keeps_made = False  # not followed: a stage with it runs each making time apart

    def __init__(self, step: str, index: int, dispatch: Dispatch, nexts: Sequence[Node]) -> None:
        """Deliver each record of a list."""
        super().__init__(step, index, None, dispatch.policy, nexts)
        self.dispatch = dispatch
        self.function = "handlers"

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Deliver and pass the handlers' results on."""
        row = run.table[self.index]
        results = self.dispatch.run(items, None, row, run.dead, None)
        _fan_out(self.nexts, results, run, out, row)

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Unused: dispatch overrides `push`."""
        raise NotImplementedError


class DispatchLogic(StatefulBatchLogic[Any, tuple[str, Any], dict[str, Any]]):
    """dispatch on a keyed stream: one bucket of keys, in order, with their states."""

    def __init__(
        self, dispatch: Dispatch, counters: Counters, row: int, resume: dict[str, Any] | None
    ) -> None:
        """Start with no state, or the snapshot's."""
        check_layout(dispatch.step, resume)
        self.dispatch = dispatch
        self.counters = counters
        self.row = row
        state = resume or {}
        self.states: dict[str, Any] = state.get("states", {})
        #: When each key last had an event (with a ttl), and ``(due, key)`` in order:
        #: one entry a key, queued again at its time when it comes up early.
        self.touched: dict[str, float] = state.get("touched", {})
        self.due: list[tuple[float, str]] = state.get("due", [])

    def on_batch(self, values: list[Any]) -> tuple[list[tuple[str, Any]], bool]:
        """Deliver each record of the batch, key by key in arrival order."""
        row = self.counters.table()[self.row]
        dead: list[DeadLetter] = []
        results: list[Any] = []
        ttl = self.dispatch.ttl
        if ttl is not None:
            self._expire(row)
        try:
            for marked in values:
                records = marked.records
                results += self.dispatch.run(
                    [r[2] for r in records], [r[0] for r in records], row, dead, self.states
                )
                if ttl is not None and records:
                    now = time.time()
                    touched = self.touched
                    for key, _, _ in records:
                        if key not in touched:  # else its entry in `due` comes up first
                            heapq.heappush(self.due, (now + ttl, key))
                        touched[key] = now
        except Exception as exc:  # noqa: BLE001 - a halt stops the run
            self.counters.halt(exc)
        out: list[tuple[str, Any]] = [("r", r) for r in results]
        out += [("d", d) for d in dead]
        return out, False

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        """Drop the states of keys with no event for their ttl."""
        self._expire(self.counters.table()[self.row])
        return [], False

    def _expire(self, row: list[int]) -> None:
        ttl = self.dispatch.ttl
        due = self.due
        now = time.time()
        while ttl is not None and due and due[0][0] <= now:
            _, key = heapq.heappop(due)
            last = self.touched.get(key)
            if last is None:
                continue
            if last + ttl > now:
                # An event of the key since: its one entry goes to its own time.
                heapq.heappush(due, (last + ttl, key))
                continue
            del self.touched[key]
            if self.states.pop(key, _MISS) is not _MISS:
                row[_EXPIRED] += 1

    def notify_at(self) -> datetime | None:
        """When the next key's state may have lived out its ttl."""
        if not self.due:
            return None
        return wake_at(self.due[0][0])

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        """Nothing is pending at the end; the states go, counted as expired."""
        self.counters.table()[self.row][_EXPIRED] += len(self.states)
        self.states.clear()
        return [], True

    def snapshot(self) -> dict[str, Any]:
        """Return the per-key states of stateful handlers (and when each key was last seen)."""
        snap = {
            "states": self.states,
            "touched": self.touched,
            "due": list(self.due),
            "layout": BUCKET_LAYOUT,
        }
        check_state(self.dispatch.step, snap)
        return snap
