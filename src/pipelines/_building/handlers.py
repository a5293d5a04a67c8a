"""dispatch's handlers: checked when the step is added, and their state looked at.

``stream.dispatch({Purchase: review, Refund: [audit, notify]}, default=...)``
hands each event to the handlers of its type. This module knows streams only
through their methods, so that the builder can import it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from operators import Event, Policy, as_policy, type_name
from operators._dispatch import Stateful
from operators._event import never_carried
from operators._stage import check_arity
from pipelines._building.graph import Node, check_name

if TYPE_CHECKING:
    from pipelines._building.builder import Stream

__all__ = ["HandlerLike", "add_dispatch", "call_of", "split_state", "usable"]

HandlerLike = Any  # a function, an object with handle(event), or stateful(...)


def call_of(handler: Any) -> Any:
    """Return what is called with each event: a handler's ``handle``, or the handler."""
    handle = getattr(handler, "handle", None)
    return handle if callable(handle) else handler


def usable(handler: Any) -> bool:
    return isinstance(handler, Stateful) or callable(call_of(handler))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _label(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else repr(key)


def _check_reached(
    table: Mapping[type | str, Any], classes: tuple[type[Event], ...], step: str, source: str
) -> None:
    """Refuse a handler for a class or type name that no event of the stream can have.

    A typo in a type name (``"purchse"``) left its handler never called, and the
    events it was meant for went to the default.
    """
    names = [type_name(c) for c in classes]
    for event_type in table:
        if isinstance(event_type, str):
            if event_type in names:
                continue
            close = difflib.get_close_matches(event_type, names, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
        elif never_carried(classes, event_type) is None:
            continue
        else:
            guess = ""
        known = ", ".join(f"{c.__name__} ({type_name(c)!r})" for c in classes)
        msg = (
            f"step {step!r} (dispatch): the handler for {_label(event_type)} would never be "
            f"called: stream {source!r} carries {known}, never {_label(event_type)}. Hint: "
            f"{guess}key each handler by one of these classes or type names, or add the "
            f"class to the source schema."
        )
        raise ValueError(msg)


def add_dispatch(
    stream: Stream[Any],
    handlers: Mapping[type | str, HandlerLike | Sequence[HandlerLike]],
    *,
    out: type[Any] | None = None,
    default: Literal["dead_letter"] | HandlerLike | None,
    name: str | None,
    on_error: Policy,
    concurrency: int,
    key: Callable[[Any], str] | None,
    every: bool = False,
) -> Stream[Any]:
    """Check the handlers and add a dispatch step after ``stream``.

    ``every``: hand each event to the handlers of every registered class it is
    an instance of and of its type name (the classic event bus), not only the
    nearest class's.
    """
    step = name or "dispatch"
    if not isinstance(handlers, Mapping) or not handlers:
        msg = (
            f"step {step!r} (dispatch): handlers must be a non-empty mapping from event "
            f"class (or type name) to handlers; got {handlers!r}. Hint: "
            f"dispatch({{Purchase: review, Refund: [audit, notify]}})."
        )
        raise TypeError(msg)
    table: dict[type | str, list[Any]] = {}
    for event_type, value in handlers.items():
        if not isinstance(event_type, type | str):
            msg = (
                f"step {step!r} (dispatch): {event_type!r} is neither an event class nor a "
                f"type name. Hint: dispatch({{Purchase: review}}) or dispatch({{'click': h}})."
            )
            raise TypeError(msg)
        table[event_type] = _as_list(value)
    defaults: list[Any] = [] if default in (None, "dead_letter") else _as_list(default)
    for event_type, items in [*table.items(), ("default", defaults)]:
        for handler in items:
            if not usable(handler):
                msg = (
                    f"step {step!r} (dispatch): the handler for {_label(event_type)} must be "
                    f"a function or an object with handle(event); got "
                    f"{type(handler).__name__} {handler!r}. Hint: {{{_label(event_type)}: "
                    f"lambda e: ...}}."
                )
                raise TypeError(msg)
            if not isinstance(handler, Stateful):
                check_arity(
                    call_of(handler),
                    1,
                    f"step {step!r} (dispatch)",
                    f"the handler for {_label(event_type)}",
                    "the event",
                    f"{{{_label(event_type)}: lambda e: ...}}.",
                    sync=False,
                )
            if isinstance(handler, Stateful) and key is None:
                msg = (
                    f"step {step!r} (dispatch): stateful handlers keep one state per key, "
                    f"so they need a keyed stream. Hint: .key_by(lambda e: e.order_id)"
                    f".dispatch(...)."
                )
                raise TypeError(msg)
    if out is not None and not isinstance(out, type):
        msg = (
            f"step {step!r} (dispatch): out must be the class of the handlers' results; "
            f"got {out!r}. Hint: dispatch({{Purchase: review}}, out=Review); for results of "
            f"several classes, name a common base class."
        )
        raise TypeError(msg)
    if not isinstance(concurrency, int) or concurrency < 1:
        msg = f"step {step!r} (dispatch): concurrency must be a positive int; got {concurrency!r}."
        raise ValueError(msg)
    classes = stream.event_classes
    if classes is not None and not every:
        _check_reached(table, classes, step, stream.step)
    if classes is not None and default is None:
        names = {k for k in table if isinstance(k, str)}
        bases = [k for k in table if isinstance(k, type)]
        missing = [
            c
            for c in classes
            if not any(issubclass(c, b) for b in bases) and type_name(c) not in names
        ]
        if missing:
            listed = ", ".join(c.__name__ for c in missing)
            msg = (
                f"step {step!r} (dispatch): no handler for {listed}, which stream "
                f"{stream.step!r} carries. Hint: register a handler for each, or make it "
                f"explicit with default='dead_letter' (or a default handler)."
            )
            raise ValueError(msg)
    pipeline = stream.pipeline
    graph = pipeline.graph
    step_name = check_name(name) if name else graph.unique(stream._auto("dispatch", None))
    node = Node(
        step_name,
        "dispatch",
        (stream._port,),
        None,
        as_policy(on_error),
        {
            "table": table,
            "default": defaults,
            "key": key,
            "concurrency": concurrency,
            "out": out,
            "every": every,
        },
    )
    result = stream._then(node)
    if out is not None and issubclass(out, Event):
        # Later steps know the class (a filter by another class is refused).
        return result._rebuild(result.pipeline, result._port, (out,))
    return result


def split_state(handlers: Mapping[Any, Sequence[Any]]) -> list[str]:
    """Name the handler objects whose instance attributes would be split among workers.

    >>> class Counter:
    ...     def __init__(self): self.seen = 0
    ...     def handle(self, event): self.seen += 1
    >>> split_state({"click": [Counter(), print]})
    ["Counter (attributes: seen) for 'click'"]
    """
    found = []
    for event_type, items in handlers.items():
        for handler in items:
            if isinstance(handler, Stateful) or inspect.isroutine(handler):
                continue
            attributes = sorted(getattr(handler, "__dict__", {}))
            if attributes and callable(getattr(handler, "handle", None)):
                found.append(
                    f"{type(handler).__name__} (attributes: {', '.join(attributes)}) "
                    f"for {_label(event_type)}"
                )
    return found
