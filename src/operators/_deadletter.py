"""Dead letters: the structured record of an input or event that failed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import date, datetime
from datetime import time as dtime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "PAYLOAD_LIMIT",
    "DeadLetter",
    "ErrorKind",
    "Origin",
    "count_dead",
    "explain",
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
            text = json.dumps(item, ensure_ascii=False, default=plain_json)
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:  # a lone surrogate: as a JSON escape
                    text = json.dumps(item, default=plain_json)
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
