"""Dead letters: the structured record of an input or event that failed."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from datetime import date, datetime
from datetime import time as dtime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_jsonable_python

__all__ = [
    "PAYLOAD_LIMIT",
    "DeadLetter",
    "ErrorKind",
    "Origin",
    "count_dead",
    "explain",
    "finite",
    "json_text",
    "jsonable",
    "payload_text",
    "plain_json",
]

#: Payloads longer than this many characters are truncated in a dead letter.
PAYLOAD_LIMIT = 2048

ErrorKind = Literal[
    "parse",
    "validation",
    "user_error",
    "key_error",
    "late",
    "future",
    "unhandled",
    "unmatched",
    "missing",
]


class Origin(BaseModel):
    """Where a record came from: the source step, partition and position."""

    model_config = ConfigDict(frozen=True)

    source: str
    partition: str
    offset: int
    file: str | None = None
    line: int | None = None
    #: The record's own name in its partition (a stream entry's id), if it has one.
    key: str | None = None


class DeadLetter(BaseModel):
    """A record that could not go on, kept with everything needed to act on it.

    ``errors`` holds pydantic's structured validation errors (without URLs)
    when validation failed. ``payload`` is the raw record or the event as
    JSON, truncated past `PAYLOAD_LIMIT` characters; ``payload_size`` and
    ``payload_sha256`` describe the whole payload.

    >>> dl = DeadLetter.build(
    ...     pipeline="p", step="parse", kind="parse", error_type="ValueError",
    ...     message="bad", payload="x" * 5000)
    >>> len(dl.payload), dl.payload_size, dl.truncated
    (2048, 5000, True)
    """

    model_config = ConfigDict(frozen=True)

    pipeline: str
    step: str
    kind: ErrorKind
    error_type: str
    message: str
    function: str | None = None
    errors: list[dict[str, Any]] | None = None
    payload: str
    payload_size: int
    payload_sha256: str
    truncated: bool
    origin: Origin | None = None
    event_time: datetime | None = None
    attempts: int = 1

    if not TYPE_CHECKING:  # type checkers know the fields

        def __getattr__(self, name: str) -> Any:
            """Say which field holds what a name that is none asks for (``reason``: ``message``).

            >>> DeadLetter.build(pipeline="p", step="s", kind="parse", error_type="E",
            ...     message="bad", payload="x").reason
            Traceback (most recent call last):
            ...
            AttributeError: a DeadLetter has no 'reason'. Hint: message holds what went wrong ...
            """
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name.startswith("__"):
                    raise
                meant = _MEANT.get(name.lower())
                hint = meant or f"its fields are {', '.join(type(self).model_fields)}."
                msg = f"a DeadLetter has no {name!r}. Hint: {hint}"
                raise AttributeError(msg) from None

    @classmethod
    def build(cls, *, payload: str, **fields: Any) -> DeadLetter:
        """Make a dead letter, truncating and hashing the payload."""
        digest = hashlib.sha256(payload.encode("utf-8", "replace")).hexdigest()
        return cls(
            payload=payload[:PAYLOAD_LIMIT],
            payload_size=len(payload),
            payload_sha256=digest,
            truncated=len(payload) > PAYLOAD_LIMIT,
            **fields,
        )


#: What a dead letter's field is often sought as, and where it is.
_MEANT = {
    **dict.fromkeys(
        ("reason", "error", "exception", "why", "msg", "cause"),
        "message holds what went wrong (error_type its exception's class, kind its sort).",
    ),
    **dict.fromkeys(
        ("record", "data", "event", "value", "raw", "item", "body"),
        "payload holds the record as text (JSON for events and dicts); origin says where it "
        "was read.",
    ),
    **dict.fromkeys(
        ("stage", "operator", "op", "node", "where"),
        "step names the step it came from (pipeline the pipeline).",
    ),
    **dict.fromkeys(
        ("type", "category", "reason_type"),
        "kind is its sort (parse, validation, user_error, ...), error_type the exception's class.",
    ),
    **dict.fromkeys(("time", "timestamp", "at"), "event_time holds the record's event time."),
}


def explain(exc: BaseException) -> str:
    """Return what a user function's exception says, with a hint where evflow knows one.

    An event is immutable: a function that sets one of its fields in place
    fails with pydantic's ``frozen_instance``, and the dead letter says how
    to make a changed copy instead.

    >>> from operators import Event
    >>> class Order(Event):
    ...     amount: int
    >>> try:
    ...     Order(amount=1).amount = 2
    ... except Exception as exc:
    ...     print(explain(exc).splitlines()[-1])
    Hint: events are immutable; return a changed copy: e.model_copy(update={'amount': ...}).
    """
    text = str(exc)
    if isinstance(exc, ValidationError):
        frozen = [e for e in exc.errors() if e["type"] == "frozen_instance"]
        if frozen:
            field = frozen[0]["loc"][-1] if frozen[0]["loc"] else "field"
            text += (
                f"\nHint: events are immutable; return a changed copy: "
                f"e.model_copy(update={{{field!r}: ...}})."
            )
    return text


def plain_json(value: Any) -> Any:
    r"""Return the JSON form of a date or time (ISO 8601), a set (sorted) or bytes; else TypeError.

    What a sink writes and a dead letter's payload holds for them. Bytes are
    their UTF-8 text, as pydantic writes an event's (not ``"b'...'"``; a byte
    that is no UTF-8 is kept as a lone surrogate, which JSON escapes):

    >>> plain_json(b"caf\xc3\xa9"), plain_json(b"\xff")
    ('café', '\udcff')
    """
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=repr)
    msg = f"{type(value).__name__} is not JSON"
    raise TypeError(msg)


def jsonable(value: Any) -> Any:
    """Return what JSON writes for a value it has no form for, as pydantic would for an event.

    A date or time as ISO 8601 text (read back as an event time), a set as a
    list in order (the same on every run), a model, a dataclass, an Enum, a
    UUID or a Decimal as pydantic writes them, anything else with a text of
    its own as its text; a value with no data to write is refused (`_no_data`).

    >>> import enum
    >>> from dataclasses import dataclass
    >>> from datetime import datetime, timezone
    >>> jsonable(datetime(2026, 1, 1, 12, tzinfo=timezone.utc)), jsonable({"b", "a"})
    ('2026-01-01T12:00:00+00:00', ['a', 'b'])
    >>> jsonable({1, "a"}), jsonable(frozenset())
    (['a', 1], [])
    >>> class Color(enum.Enum):
    ...     RED = "red"
    >>> @dataclass
    ... class Point:
    ...     x: int
    ...     color: Color
    >>> jsonable(Point(1, Color.RED))
    {'x': 1, 'color': 'red'}
    """
    return _json_form(value, lambda: finite(to_jsonable_python(value, fallback=json_text)))


def finite(value: Any) -> Any:
    """Return ``value`` with every float that is not finite as None (as a key: its name)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _key(key: Any) -> Any:
    """Return a key JSON can hold: a float that is not finite by the name JSON gives it."""
    if isinstance(key, float) and not math.isfinite(key):
        return "NaN" if key != key else ("Infinity" if key > 0 else "-Infinity")
    return key


def json_text(value: Any) -> Any:
    """Return what JSON writes for a value pydantic has no form for: its text, if it has one."""
    return _json_form(value, lambda: str(value))


def _json_form(value: Any, otherwise: Callable[[], Any]) -> Any:
    """Return `plain_json`'s form of ``value``; refuse one without data; else ``otherwise()``."""
    try:
        return plain_json(value)
    except TypeError:
        pass
    why = _no_data(value)
    if why is not None:
        raise TypeError(why)
    return otherwise()


def _no_data(value: Any) -> str | None:
    """Say why ``value`` has nothing to write, or None when it has.

    >>> print(_no_data(object()))  # doctest: +NORMALIZE_WHITESPACE
    an object is not data JSON can hold: its only text is Python's default, which names where
    it is in memory. Hint: write its fields, e.g. {"x": o.x}, or give its class a __str__.
    >>> print(_no_data(len))  # doctest: +NORMALIZE_WHITESPACE
    a builtin_function_or_method is not data JSON can hold. Hint: call it, or leave it out of
    the record.
    >>> _no_data(3) is None and _no_data("text") is None
    True
    """
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(value, Iterator | AsyncIterator | Coroutine):
        return (
            f"{article} {name} is not data JSON can hold: a step handed on the {name}, not its "
            f"items (a map whose function yields or returns a generator expression). Hint: "
            f"flat_map(fn) hands on each item; list(...) keeps them as one list."
        )
    if isinstance(value, type) or inspect.isroutine(value):
        return (
            f"{article} {name} is not data JSON can hold. Hint: call it, or leave it out of "
            f"the record."
        )
    if all(getattr(type(value), how) is getattr(object, how) for how in ("__str__", "__repr__")):
        return (
            f"{article} {name} is not data JSON can hold: its only text is Python's default, "
            f'which names where it is in memory. Hint: write its fields, e.g. {{"x": o.x}}, '
            f"or give its class a __str__."
        )
    return None


def payload_text(item: Any) -> str:
    r"""Render any payload (raw bytes, a string, an event, a value) as text.

    A value that cannot be shown (its ``repr`` raises, an int too long for
    text) is named by its type and the error, so that its dead letter is
    still made.

    >>> class Hidden:
    ...     def __repr__(self):
    ...         raise RuntimeError("secret")
    >>> payload_text(Hidden())
    '<a Hidden that cannot be shown: RuntimeError: secret>'

    A dict or list is JSON, as a sink writes it, so that it can be read back
    and sent again (a date as ISO 8601 text, a set as a sorted list); one
    that JSON cannot hold (a tuple key, an object) is shown as Python:

    >>> payload_text({"user": "ada", "tags": {"b", "a"}}), payload_text({(1, 2): "x"})
    ('{"user": "ada", "tags": ["a", "b"]}', "{(1, 2): 'x'}")
    >>> payload_text({"k": "é\udcff"})  # text no UTF-8 holds: a JSON escape
    '{"k": "\\u00e9\\udcff"}'
    """
    if isinstance(item, bytes | bytearray):
        return bytes(item).decode("utf-8", "replace")
    if isinstance(item, str):
        return item
    if item.__class__ is dict or item.__class__ is list:
        try:
            text = json.dumps(item, ensure_ascii=False, default=jsonable)
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:  # a lone surrogate: as a JSON escape
                    text = json.dumps(item, default=jsonable)
            return text
        except (TypeError, ValueError, RecursionError):
            pass  # shown as Python, below
    try:
        if isinstance(item, BaseModel):
            try:
                return item.model_dump_json()
            except Exception:  # noqa: BLE001 - a field JSON cannot hold: shown as Python
                return repr(item)
        return repr(item)
    except Exception as exc:  # noqa: BLE001 - the letter is made all the same
        return f"<a {type(item).__qualname__} that cannot be shown: {type(exc).__name__}: {exc}>"


def count_dead(
    letters: Iterable[DeadLetter], counts: dict[tuple[str, str], int] | None = None
) -> dict[tuple[str, str], int]:
    """Add ``letters`` to ``counts`` (a new dict by default) by ``(step, kind)``; return it.

    >>> letter = DeadLetter.build(
    ...     pipeline="p", step="read", kind="parse", error_type="E", message="m", payload="x"
    ... )
    >>> count_dead([letter, letter])
    {('read', 'parse'): 2}
    """
    counts = {} if counts is None else counts
    for letter in letters:
        where = (letter.step, letter.kind)
        counts[where] = counts.get(where, 0) + 1
    return counts
