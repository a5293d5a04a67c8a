"""The first operation of a stage: parse and validate raw records into events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from operators._deadletter import DeadLetter, ErrorKind, payload_text
from operators._event import dated_by_default, named_by_text
from operators._policy import ErrorPolicy, PipelineHalted
from operators._stage import (
    _DEAD,
    _IN,
    _OUT,
    _SKIPPED,
    Node,
    StageOp,
    Unreadable,
    _fan_out,
    _Run,
    kept_made,
)

__all__ = ["ParseOp"]


class ParseOp(StageOp):
    """Turn raw records (JSON text, dicts) into events with one validator.

    Events that are already instances pass through. A record that is not
    valid JSON is a ``parse`` dead letter; one that breaks the schema is a
    ``validation`` dead letter carrying pydantic's structured errors.
    """

    kind = "parse"
    keeps_made = False  # not followed: a stage with it runs each making time apart

    def __init__(
        self,
        step: str,
        index: int,
        adapter: TypeAdapter[Any] | None,
        policy: ErrorPolicy,
        nexts: Sequence[Node] = (),
        classes: tuple[type[BaseModel], ...] | None = None,
    ) -> None:
        """Make a parse step with a compiled validator (None: pass records on).

        ``classes``: the schema's event classes; an event of another class is
        validated as its fields say, as a dict is (see `parse_one`).
        """
        super().__init__(step, index, None, policy, nexts)
        self.adapter = adapter
        self.classes = classes
        self.function = "schema"
        if adapter is not None:
            # The compiled validator itself: no Python wrapper per record.
            validator = getattr(adapter, "validator", None)
            self.parse_json = getattr(validator, "validate_json", adapter.validate_json)
            self.parse_python = getattr(validator, "validate_python", adapter.validate_python)

    def push(self, items: list[Any], run: _Run, out: list[list[Any]]) -> None:
        """Parse a list; dead letters carry the record's origin."""
        row = run.table[self.index]
        if self.adapter is None:
            row[_IN] += len(items)
            if run.chunk.unreadable:
                items = self._readable(items, run, row)
            row[_OUT] += len(items)
            _fan_out(self.nexts, items, run, out, row, fixed=run.chunk.fixed)
            return
        events: list[Any] = []
        append = events.append
        blanks: list[int] = []  # positions of blank lines: neither events nor dead letters
        # Failures are kept without their tracebacks: a traceback holds this
        # frame, whose locals hold the failures list, and that cycle would
        # leave the whole slice of events for the garbage collector.
        failures: list[tuple[int, Any, Exception]] = []
        if items and isinstance(items[0], bytes | str):
            # Fast path for raw text: one compiled call per record. Anything
            # unusual (blank lines, non-text records) goes by the slow path.
            parse = self.parse_json
            index = 0
            it = iter(items)
            while True:
                try:
                    for x in it:
                        append(parse(x))
                        index += 1
                    break
                except Exception as exc:  # noqa: BLE001 - looked at below
                    if not isinstance(x, bytes | str):
                        try:
                            append(self.parse_one(x))
                        except Exception as other:  # noqa: BLE001 - dead-lettered
                            failures.append((index, x, other.with_traceback(None)))
                    elif x.strip():
                        failures.append((index, x, exc.with_traceback(None)))
                    else:
                        blanks.append(index)
                    index += 1
        else:
            for index, x in enumerate(items):
                try:
                    append(self.parse_one(x))
                except Exception as exc:  # noqa: BLE001 - dead-lettered below
                    failures.append((index, x, exc.with_traceback(None)))
        row[_IN] += len(items) - len(blanks)
        self._name(items, events, failures, blanks, run)
        for position, raw, error in failures:
            self._fail(position, raw, error, run, row)
        row[_OUT] += len(events)
        _fan_out(self.nexts, events, run, out, row)

    def _readable(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Dead-letter the `Unreadable` records of a source read without a schema."""
        kept = []
        for position, x in enumerate(items):
            if x.__class__ is Unreadable:
                self._fail(position, x, x.error, run, row)
            else:
                kept.append(x)
        if run.made is not None and len(kept) != len(items):
            run.made = kept_made(items, kept, run.made)
        return kept

    def _name(
        self,
        items: list[Any],
        events: list[Any],
        failures: list[tuple[int, Any, Exception]],
        blanks: list[int],
        run: _Run,
    ) -> None:
        """Give each event parsed without an ``id`` one made from where it was read.

        ``source/partition/offset`` (or the stream entry's own name for the
        offset): the same record read again (a resumed run reads what came
        after its last snapshot again) gets the same id, so a sink that
        de-duplicates by id stores it once. A random id would differ each time.
        """
        unnamed = [i for i, e in enumerate(events) if "id" not in e.__pydantic_fields_set__]
        chunk = run.chunk
        undated: list[int] = []
        if chunk.times is not None:
            undated = [i for i, e in enumerate(events) if "time" not in e.__pydantic_fields_set__]
        if not unnamed and not undated:
            return
        positions: list[int] | range = range(len(items))
        if failures or blanks:
            skipped = {position for position, _, _ in failures}.union(blanks)
            positions = [i for i in positions if i not in skipped]
        if undated:
            self._date(items, events, undated, positions, run)
        if not unnamed:
            return
        keys = chunk.keys
        head = f"{chunk.source}/{chunk.own_name or chunk.partition}/"
        first = chunk.offset + run.base
        for i in unnamed:
            at = positions[i]
            event = events[i]
            if isinstance(items[at], BaseModel) or not named_by_text(type(event)):
                continue  # an event made before it was read, or ids of another kind
            own = keys[run.base + at] if keys is not None else None
            event.__dict__["id"] = f"{head}{first + at if own is None else own}"
            event.__pydantic_fields_set__.add("id")

    def _date(
        self,
        items: list[Any],
        events: list[Any],
        undated: list[int],
        positions: list[int] | range,
        run: _Run,
    ) -> None:
        """Date each event parsed without a ``time`` by when its broker stored it.

        Its time field's default would say when this run parsed it: another
        time on every read. A stream entry's time is the same on every read
        (as a message's timestamp is to a Kafka reader).
        """
        times = run.chunk.times
        assert times is not None
        for i in undated:
            at = positions[i]
            event = events[i]
            stored = times[run.base + at]
            if stored is None or isinstance(items[at], BaseModel):
                continue  # a gap's letter, or an event made before it was read
            if not dated_by_default(type(event)):
                continue
            event.__dict__["time"] = datetime.fromtimestamp(stored, timezone.utc)
            event.__pydantic_fields_set__.add("time")

    def parse_one(self, x: Any) -> Any:
        """Parse one record of any form: text, an event, a mapping.

        An event of one of the schema's classes goes on as it is; one of
        another class (a `Buy` read with ``schema=View``) is validated from
        its fields, as a dict of them would be: refused here (its type is not
        the schema's), rather than failing in a later step that reads it as
        the schema's.
        """
        if isinstance(x, BaseModel):
            classes = self.classes
            if classes is None or isinstance(x, classes):
                return x
            return self.parse_python(x.model_dump())
        if isinstance(x, bytes | str):
            return self.parse_json(x)
        if isinstance(x, Unreadable):
            raise x.error
        return self.parse_python(x)

    def _fail(self, position: int, raw: Any, exc: Exception, run: _Run, row: list[int]) -> None:
        if self.policy.mode == "skip":
            row[_SKIPPED] += 1
            return
        payload = raw.text if isinstance(raw, Unreadable) else payload_text(raw)
        if self.policy.mode == "halt":
            raise PipelineHalted(run.pipeline, self.step, "schema", payload) from exc
        errors = None
        kind: ErrorKind = raw.kind if isinstance(raw, Unreadable) else "parse"
        message = str(exc)
        if isinstance(exc, ValidationError):
            errors = [_plain(e) for e in exc.errors(include_url=False)]
            if not any(e["type"] == "json_invalid" for e in errors):
                kind = "validation"
            message = said(errors)
        row[_DEAD] += 1
        run.dead.append(
            DeadLetter.build(
                pipeline=run.pipeline,
                step=self.step,
                kind=kind,
                error_type=type(exc).__qualname__,
                message=message,
                function=(raw.function if isinstance(raw, Unreadable) else None) or "schema",
                errors=errors,
                payload=payload,
                origin=run.chunk.origin(run.base + position),
            )
        )

    def apply(self, items: list[Any], run: _Run, row: list[int]) -> list[Any]:
        """Unused: parse overrides `push`."""
        raise NotImplementedError


def said(errors: list[dict[str, Any]], most: int = 3) -> str:
    """Say what a record's first few validation errors are, each with where it is.

    >>> said([{"loc": ["amount"], "msg": "Field required"}, {"loc": [], "msg": "Bad"}])
    'amount: Field required; Bad'
    >>> said([{"loc": ["a", "0"], "msg": "x"}] * 5)
    'a.0: x; a.0: x; a.0: x (and 2 more)'
    """
    parts = [
        f"{'.'.join(e['loc'])}: {e['msg']}" if e.get("loc") else str(e["msg"])
        for e in errors[:most]
    ]
    more = len(errors) - most
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _plain(error: Any) -> dict[str, Any]:
    # pydantic puts the offending input and context values in errors; keep
    # them as text so dead letters stay serialisable.
    plain = dict(error)
    if "input" in plain:
        plain["input"] = payload_text(plain["input"])[:200]
    if "ctx" in plain:
        plain["ctx"] = {k: str(v) for k, v in plain["ctx"].items()}
    plain["loc"] = [str(p) for p in plain.get("loc", ())]
    return plain
