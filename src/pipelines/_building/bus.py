"""The classic `EventBus` with `Handler`, and the door from it to a dataflow.

`EventBus` keeps the classic
``register`` / ``publish`` API, delivering synchronously in this process, and
``bus.pipeline(source)`` turns the same registrations into a dataflow.
"""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from operators import Policy, Sink, Source
from operators._dispatch import Stateful, listed
from operators._stage import check_arity
from pipelines._building.handlers import HandlerLike, add_dispatch, call_of, usable

if TYPE_CHECKING:
    from pipelines._building.builder import Pipeline

__all__ = ["EventBus", "Handler"]


class Handler(ABC):
    """Base of the classic event-bus handler: override ``handle(event)``."""

    @abstractmethod
    def handle(self, event: Any) -> Any:
        """Handle one event; what is returned flows on in a dataflow."""


def _run_to_end(awaitable: Any, event: Any) -> Any:
    """Run an async handler's awaitable to its end, outside any running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running in this thread: run one
    else:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # never awaited otherwise: say so instead of a warning at exit
        msg = (
            f"EventBus.publish: an async handler for {event!r} cannot be run to its end "
            f"inside a running event loop. Hint: await bus.publish_async(event)."
        )
        raise RuntimeError(msg)

    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


async def _collected(values: Any) -> list[Any]:
    """Read an async generator handler's values to the end."""
    return [value async for value in values]


class EventBus:
    """The classic in-process event bus, and the door to an evflow dataflow.

    >>> from pipelines import Event, EventBus, Handler
    >>> class Click(Event):
    ...     def get_type(self): return "click"
    >>> class Printer(Handler):
    ...     def handle(self, event): print("handled", event.get_type())
    >>> bus = EventBus()
    >>> bus.register("click", Printer())
    >>> bus.publish(Click())  # what the handlers returned
    handled click
    [None]
    """

    def __init__(self) -> None:
        """Start with no handlers."""
        self._handlers: dict[type | str, list[Any]] = {}
        #: Events published with no handler (the classic bus drops them; we keep them).
        self.unhandled: list[Any] = []

    def register(self, event_type: type | str, handler: HandlerLike) -> None:
        """Have ``handler`` handle events of ``event_type`` (a type name or a class)."""
        if not isinstance(event_type, type | str):
            msg = f"register: event_type must be a type name or a class; got {event_type!r}."
            raise TypeError(msg)
        if not usable(handler) or isinstance(handler, Stateful):
            msg = (
                f"register: handler must be a function or an object with handle(event); got "
                f"{type(handler).__name__} {handler!r}."
            )
            raise TypeError(msg)
        check_arity(
            call_of(handler),
            1,
            "register",
            "handler",
            "the event",
            "bus.register(Purchase, lambda e: ...).",
            sync=False,
        )
        self._handlers.setdefault(event_type, []).append(handler)

    def unregister(self, event_type: type | str, handler: HandlerLike) -> None:
        """Stop ``handler`` handling ``event_type``."""
        handlers = self._handlers.get(event_type, [])
        if handler not in handlers:
            msg = f"unregister: {handler!r} is not registered for {event_type!r}."
            raise ValueError(msg)
        handlers.remove(handler)
        if not handlers:
            del self._handlers[event_type]

    def handlers(self) -> dict[type | str, list[Any]]:
        """Return a copy of the registrations."""
        return {k: list(v) for k, v in self._handlers.items()}

    def _found(self, event: Any) -> list[Any]:
        found: list[Any] = []
        for cls in type(event).__mro__:
            found += self._handlers.get(cls, [])
        get_type = getattr(event, "get_type", None)
        if get_type is not None:
            found += self._handlers.get(get_type(), [])
        if not found:
            self.unhandled.append(event)
        return [call_of(h) for h in found]

    def publish(self, event: Any) -> list[Any]:
        """Deliver ``event`` now to every handler of its type, in registration order.

        Handlers registered for a class (or a base class) come first, then those
        registered for the type name ``event.get_type()``. Returns what the
        handlers returned, in that order; a generator handler is run to its end
        here and its values are a list. An ``async def`` handler (an async
        generator too) is run to its end here; inside a running event loop, ``await
        bus.publish_async(event)`` instead.

        >>> bus = EventBus()
        >>> async def later(event): return f"awaited {event}"
        >>> bus.register(str, later); bus.register(str, len)
        >>> bus.publish("hi")
        ['awaited hi', 2]
        """
        results = []
        for call in self._found(event):
            value = call(event)
            if inspect.isasyncgen(value):
                value = _run_to_end(_collected(value), event)
            elif inspect.isawaitable(value):
                value = _run_to_end(value, event)
            results.append(listed(value))
        return results

    async def publish_async(self, event: Any) -> list[Any]:
        """Deliver ``event`` like `publish`, awaiting ``async def`` handlers in this event loop."""
        results = []
        for call in self._found(event):
            value = call(event)
            if inspect.isasyncgen(value):
                value = await _collected(value)
            elif inspect.isawaitable(value):
                value = await value
            results.append(listed(value))
        return results

    def pipeline(
        self,
        source: Source[Any],
        *,
        name: str = "event_bus",
        key: Callable[[Any], str] | None = None,
        sink: Sink | None = None,
        on_error: Policy = "dead_letter",
        concurrency: int = 1,
    ) -> Pipeline:
        """Return the evflow pipeline that does what this bus does, as a dataflow.

        Each event of ``source`` goes to the same handlers as `publish` gives
        it (those of every registered class it is an instance of, then those of
        its ``get_type()``), and what they return flows on; with ``key`` the stream is keyed first,
        so each key's events are handled in order on one worker. Events no
        handler takes become dead letters; what handlers return goes to
        ``sink`` (a memory sink ``"results"`` by default). ``async def``
        handlers of a batch run concurrently, up to ``concurrency`` at once on
        each worker (so workers x processes x ``concurrency`` in all).

        Each worker and process holds its own copy of a handler object: state
        kept in its attributes is split among them (evflow warns when a run
        on several workers dispatches to such an object). Keep state with
        ``stateful(...)`` handlers on a keyed stream instead.
        """
        from pipelines._building.builder import Pipeline
        from pipelines.sinks import memory

        if not self._handlers:
            msg = "EventBus.pipeline: no handler is registered. Hint: bus.register('click', h)."
            raise ValueError(msg)
        stream: Any = Pipeline(name).read(source)
        if key is not None:
            stream = stream.key_by(key)
        handled = add_dispatch(
            stream,
            self.handlers(),
            default="dead_letter",
            name=None,
            on_error=on_error,
            concurrency=concurrency,
            key=getattr(stream, "_key", None),
            every=True,
        )
        result: Pipeline = handled.write(sink or memory("results"))
        return result
