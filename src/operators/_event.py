"""The event model: `Event`, the base of every evflow event, and schemas."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import hashlib
import inspect
import operator
import os
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NoReturn, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from operators._deadletter import payload_text

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Event", "Schema", "event_classes", "field_reader", "schema_adapter", "type_name"]


def _new_id() -> str:
    return os.urandom(16).hex()


def field_reader(name: str) -> Callable[[Any], Any]:
    """Return a function that reads field ``name`` of a record: an attribute, or a dict's key.

    As the aggregators read their fields, so that ``event_time("ts")`` dates
    a dict read without a schema as it dates an event.

    >>> read = field_reader("ts")
    >>> read({"ts": 5}), read(types.SimpleNamespace(ts=6))
    (5, 6)
    """
    get = operator.attrgetter(name)

    def read(record: Any) -> Any:
        if record.__class__ is dict:
            return record[name]
        return get(record)

    return read


def id_part(text: str) -> str:
    """Return ``text`` as a part of a made record's id: ``%`` and ``/`` escaped, ``-`` alone too.

    So the parts of an id (a key, the ids of the records it was made from,
    ``-`` for none, ``%23`` and a digest for a record without an id: see
    `record_part`) are read back one way only: two records never share an id.

    >>> id_part("e1"), id_part("orders/7"), id_part("50%"), id_part("-"), id_part("a-b")
    ('e1', 'orders%2F7', '50%25', '%2D', 'a-b')
    """
    if "/" in text or "%" in text:
        return text.replace("%", "%25").replace("/", "%2F")
    return "%2D" if text == "-" else text


def own_id(record: Any) -> str | None:
    """Return ``record``'s own id as text (an object's ``id``, a dict's ``"id"``), or None.

    >>> own_id({"id": 7}), own_id({"n": 1}), own_id(("a", 1))
    ('7', None, None)
    """
    found = record.get("id") if isinstance(record, dict) else getattr(record, "id", None)
    return None if found is None else str(found)


def given_id(record: Any) -> str | None:
    """Return ``record``'s id as `own_id` does, but None for an event whose id was not given.

    An event made without an id (``Alert(user=...)`` in a map) gets a random
    one (see `Event`): different on every run, it cannot place the event among
    others (``first``, ``last``, ``collect``) nor name what is made from it,
    the same way twice. Such an event is told apart by its content instead.

    >>> class Ping(Event):
    ...     n: int
    >>> given_id(Ping(n=1, id="p1")), given_id(Ping(n=1)), given_id({"id": 7})
    ('p1', None, '7')
    """
    if record.__class__ is dict:
        found = record.get("id")
    else:
        found = getattr(record, "id", None)
        if found is not None and "id" not in getattr(record, "__pydantic_fields_set__", ("id",)):
            return None  # a model's default (a random id): not given
    return None if found is None else str(found)


def named_by_text(cls: type[BaseModel]) -> bool:
    """Whether ``cls`` keeps its ``id`` as text (an event class may declare another kind).

    Only then does a source name its records without one (``source/partition/offset``).
    """
    found = cls.model_fields.get("id")
    return found is not None and found.annotation is str


def record_id(record: Any) -> str | None:
    """Return ``record``'s given id as a part of a made record's id, or None if it has none.

    >>> record_id({"id": "orders/7"}), record_id({"n": 1}), record_id(("a", 1))
    ('orders%2F7', None, None)
    """
    found = given_id(record)
    return None if found is None else id_part(found)


def record_part(record: Any) -> str:
    """Return what tells ``record`` apart in a made record's id: its id, or its content's digest.

    A record without an id (a dict, a tuple, a number, an event made without
    one: see `given_id`) is named by ``%23`` (an
    escaped ``#``, which no escaped id begins with) and a digest of its text,
    the same on every run and in every process: records of other content give
    results of other ids. Identical records without ids give identical
    digests; where they meet at once (a window's records) the caller tells
    them apart by their count.

    >>> record_part({"id": "orders/7"}), record_part({"id": "%23a"})
    ('orders%2F7', '%2523a')
    >>> record_part({"n": 1}) == record_part({"n": 1}) != record_part({"n": 2})
    True
    >>> record_part(("a", 1))[:3], len(record_part(("a", 1)))
    ('%23', 19)
    """
    found = record_id(record)
    if found is not None:
        return found
    if isinstance(record, BaseModel) and "id" in type(record).model_fields:
        if _may_hold_set(type(record)):  # as JSON with sets in order (`payload_text`)
            shown = payload_text(record.model_dump(exclude={"id"}))
        else:
            shown = record.model_dump_json(exclude={"id"})  # an event's random id: its content
    elif record.__class__ is tuple and any(isinstance(v, set | frozenset) for v in record):
        shown = payload_text(list(record))
    else:
        shown = payload_text(record)
    text = shown.encode("utf-8", "replace")
    return "%23" + hashlib.blake2b(text, digest_size=8).hexdigest()


def may_set_fields(cls: type[BaseModel]) -> bool:
    """Whether code of ``cls`` may set fields after validation, unseen by pydantic.

    A ``mode="after"`` or ``"wrap"`` model validator, or a ``model_post_init``,
    can set ``time`` from another field (``object.__setattr__``), which leaves
    it out of the fields set: such a time is not known to be the default.
    """
    validators = cls.__pydantic_decorators__.model_validators.values()
    if any(v.info.mode != "before" for v in validators):
        return True
    for base in cls.__mro__:
        if base is Event or base is BaseModel:
            return False
        if "model_post_init" in base.__dict__:
            return True
    return False


#: Classes `dated_by_default` has looked at, and its answer.
_DEFAULT_DATED: dict[type[Any], bool] = {}


def dated_by_default(cls: type[Any]) -> bool:
    """Whether an event of ``cls`` given no ``time`` is dated by its default factory (now).

    False for a class without such a field, or whose own code may set it
    (`may_set_fields`): a source that knows when a record was stored (a
    stream entry) dates it so only where the event would otherwise be dated
    when it was parsed.
    """
    known = _DEFAULT_DATED.get(cls)
    if known is None:
        fields = getattr(cls, "model_fields", {})
        info = fields.get("time")
        known = _DEFAULT_DATED[cls] = (
            info is not None and info.default_factory is not None and not may_set_fields(cls)
        )
    return known


#: Classes `_may_hold_set` has looked at, and its answer.
_SET_HOLDERS: dict[type[BaseModel], bool] = {}


def _may_hold_set(cls: type[BaseModel]) -> bool:
    """Whether an instance of ``cls`` may hold a set, which pydantic writes in its hashes' order.

    A set of text iterates in another order in each run of a program, so
    `record_part` writes such a record with its sets in order. Decided once
    per class, from its fields' types (a field of any type may hold one).
    """
    known = _SET_HOLDERS.get(cls)
    if known is None:
        _SET_HOLDERS[cls] = False  # a model that holds itself: decided by its other fields
        known = cls.model_config.get("extra") == "allow" or any(
            _type_may_hold_set(info.annotation) for info in cls.model_fields.values()
        )
        _SET_HOLDERS[cls] = known
    return known


def _type_may_hold_set(annotation: Any) -> bool:
    """Whether a value of a field's type may be, or hold, a set (see `_may_hold_set`)."""
    if annotation is Any or annotation is object or isinstance(annotation, typing.TypeVar):
        return True
    origin = typing.get_origin(annotation) or annotation
    if origin in (set, frozenset, typing.AbstractSet, typing.MutableSet):
        return True
    if origin is collections.abc.Set or origin is collections.abc.MutableSet:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _may_hold_set(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return True  # its fields' types may be text: not looked into
    return any(_type_may_hold_set(arg) for arg in typing.get_args(annotation))


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    """Something that happened: a typed, validated, immutable record.

    Subclasses declare their fields. ``type`` is the discriminator that tells
    event classes apart when records are parsed; a subclass that does not
    declare ``type: Literal[...]`` gets its lower-cased class name.
    ``id`` defaults to a random 32-character hex string and ``time`` to the
    moment of creation (always timezone-aware), so ``MyEvent()`` is valid; a
    step on event time refuses an event made during the run with that default
    time (parsed from a record without one, or made by a step without
    ``time=``): it says when the run made it, not when it happened.
    A record a source reads without an ``id`` (text, a dict, an event a
    ``generate`` factory makes) gets ``source/partition/offset`` instead: the
    same on every read of the same input. An event made without one keeps its
    random id, but no step places it or names what it makes by it (see
    `given_id`).

    >>> class Click(Event):
    ...     user: str = "anon"
    >>> c = Click(user="ada")
    >>> c.type, c.user, c.time.tzinfo is not None
    ('click', 'ada', True)
    >>> c.get_type()
    'click'

    Numbers must be finite: ``NaN``, ``Infinity`` and overflowing values such
    as ``1e999`` fail validation (a ``validation`` dead letter where records
    are read) instead of being written out as ``null`` later. A class that
    wants them says ``model_config = ConfigDict(allow_inf_nan=True)``; they are
    then written out as the JSON constants ``NaN`` and ``Infinity``.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, ser_json_inf_nan="constants")

    if TYPE_CHECKING:
        # To type checkers any type, so that a subclass may narrow it to its
        # own Literal (pyright holds fields invariant otherwise).
        type: Any = "event"
    else:
        type: str = "event"
    id: str = Field(default_factory=_new_id)
    time: AwareDatetime = Field(default_factory=_now)

    __evflow_type__: ClassVar[str] = "event"
    #: The names ``cls(...)`` takes (see `__init__`; None: any), found for each class
    #: when it is made.
    __evflow_kwargs__: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass without its own ``type`` a literal one.

        Not where a base declares ``type`` free (a str, as `Joined` does: its
        records are typed by the step that made them): its subclasses, and
        its generic forms (``Joined[Order, Payment]``), take any type too.
        """
        annotations = dict(inspect.get_annotations(cls))
        if "type" not in annotations and not _free_type(cls):
            name = cls.__name__.lower()
            annotations["type"] = Literal[name]
            cls.__annotations__ = annotations
            cls.type = name
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass without a docstring one: ``help()`` shows evflow's words first.

        A ``time`` declared so that it takes a time without a timezone (plain
        ``datetime``, or a default that has none) is refused here: every such
        event would be a dead letter at the first step on event time.

        >>> from datetime import datetime
        >>> class Click(Event):  # doctest: +ELLIPSIS
        ...     time: datetime
        Traceback (most recent call last):
        ...
        TypeError: event class Click declares time: datetime, which takes times without a ...
        """
        super().__pydantic_init_subclass__(**kwargs)
        when = cls.model_fields["time"]
        msg = None
        if when.annotation is datetime:
            msg = (
                f"event class {cls.__name__} declares time: datetime, which takes times "
                f"without a timezone; evflow's event times are aware. Hint: from pydantic "
                f"import AwareDatetime; time: AwareDatetime (text ends with Z or an offset)."
            )
        elif isinstance(when.default, datetime) and when.default.tzinfo is None:
            msg = (
                f"event class {cls.__name__} gives time the default {when.default!r}, which "
                f"has no timezone; evflow's event times are aware. Hint: give it one, e.g. "
                f"datetime(2026, 1, 1, tzinfo=timezone.utc)."
            )
        if msg is not None:
            raise TypeError(msg)
        cls.__evflow_kwargs__ = _keyword_names(cls)  # each class its own (see __init__)
        if cls.__doc__ is None:
            fields = ", ".join(
                f"{name}: {getattr(info.annotation, '__name__', info.annotation)}"
                for name, info in cls.model_fields.items()
                if name not in Event.model_fields
            )
            kind = cls.model_fields["type"].default
            intro = (Event.__doc__ or "").split("\n\n")[0]
            cls.__doc__ = (
                f"An evflow event of type {kind!r}, with {fields or 'no fields of its own'} "
                f"besides type, id and time.\n\n{intro}\n\nSee operators.Event for ids, "
                f"times and validation."
            )

    if not TYPE_CHECKING:  # type checkers keep pydantic's signature of the fields

        def __init__(self, /, **data: Any) -> None:
            """Make an event of the given fields; a name that is no field is refused.

            pydantic drops what it does not know: ``Order(amout=2)`` made an
            order of the default amount without a word. Records parsed from
            text or dicts still leave unknown keys out (a newer producer may
            add fields); a class that allows extra fields, or rewrites its
            input in a ``mode="before"`` validator, is taken as it is.

            >>> class Order(Event):
            ...     amount: int = 0
            >>> Order(amout=2)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            TypeError: Order() got 'amout', which is not a field of Order ... 'amount'?
            """
            cls = type(self)
            names = cls.__evflow_kwargs__
            if names is not None and not names.issuperset(data):
                _refuse_names(cls, data, names)
            # What pydantic's own __init__ does, without a second call's cost.
            made = self.__pydantic_validator__.validate_python(data, self_instance=self)
            if made is not self:
                msg = (
                    f"a model validator of {cls.__name__} returned another object than the "
                    f"{cls.__name__} being made, which keeps the fields it was given"
                )
                warnings.warn(msg, stacklevel=2)

        # pydantic builds what it parses or validates without calling a model's own
        # __init__ when it is marked as its base one's (as pydantic's RootModel does): so
        # records read from text or dicts skip the check above, and parse at full speed.
        __init__.__pydantic_base_init__ = True

    def get_type(self) -> str:
        """Return the event's type name (the event-bus vocabulary)."""
        return str(self.type)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Return a copy, with the fields ``update`` names changed and validated.

        pydantic's own ``model_copy`` sets what ``update`` holds as it is: a
        value of the wrong type, a time without a timezone, a misspelt field
        name would make an event its class forbids, found (or not) only where
        it is written or read back. An event's copy is validated as the event
        was: a wrong value raises pydantic's ``ValidationError`` (in a step's
        function: a dead letter naming the field), a name that is no field a
        ``ValueError``.

        >>> class Order(Event):
        ...     amount: int
        >>> Order(amount=1).model_copy(update={"amount": "2"}).amount
        2
        >>> Order(amount=1).model_copy(update={"amout": 2})
        Traceback (most recent call last):
        ...
        ValueError: Order.model_copy: 'amout' is not a field of Order. Hint: did you mean 'amount'?
        """
        copied = super().model_copy(deep=deep)
        if not update:
            return copied
        cls = type(self)
        fields = cls.model_fields
        extra = copied.__pydantic_extra__
        if extra is None:  # extra fields not allowed: each name must be a field
            for name in update:
                if name not in fields:
                    msg = (
                        f"{cls.__name__}.model_copy: {name!r} is not a field of "
                        f"{cls.__name__}. Hint: {_nearest(str(name), [*fields])}"
                    )
                    raise ValueError(msg)
        made = cls.model_validate({**copied.__dict__, **(extra or {}), **update})
        object.__setattr__(made, "__pydantic_fields_set__", copied.model_fields_set | set(update))
        if copied.__pydantic_private__ is not None:  # private attributes, as pydantic copies them
            object.__setattr__(made, "__pydantic_private__", copied.__pydantic_private__)
        return made


def _keyword_names(cls: type[BaseModel]) -> frozenset[str] | None:
    """Return the names ``cls(...)`` takes: fields and their aliases; None where it takes any.

    Any: a class that allows extra fields (or forbids them: pydantic says so
    itself), takes a field by a choice of aliases or a path, has a model
    validator that sees its input first (it may take other names), or an
    ``__init__`` of its own.
    """
    if cls.model_config.get("extra") in ("allow", "forbid") or cls.__pydantic_custom_init__:
        # (A class's own __init__ is called by pydantic on parsed records too.)
        return None
    for decorator in cls.__pydantic_decorators__.model_validators.values():
        if decorator.info.mode in ("before", "wrap"):
            return None
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        names.add(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
            elif alias is not None:
                return None
    return frozenset(names)


def _refuse_names(cls: type[BaseModel], data: Mapping[str, Any], names: frozenset[str]) -> NoReturn:
    """Raise for the first name in ``data`` that ``cls`` does not take, with the nearest."""
    wrong = next(str(name) for name in data if name not in names)
    msg = (
        f"{cls.__name__}() got {wrong!r}, which is not a field of {cls.__name__} (pydantic "
        f"would drop it without a word). Hint: {_nearest(wrong, [*cls.model_fields])}"
    )
    raise TypeError(msg)


def _nearest(name: str, fields: list[str]) -> str:
    """Say which field a name that is none may have meant, or list the fields."""
    close = difflib.get_close_matches(name, fields, n=1)
    return f"did you mean {close[0]!r}?" if close else f"its fields: {fields}."


Event.__evflow_kwargs__ = _keyword_names(Event)  # (its subclasses find theirs when made)

#: A schema is one event class or a union of them (``View | Purchase``).
Schema = Any


def _free_type(cls: type) -> bool:
    """Whether ``cls`` comes from a generic event class that leaves ``type`` free.

    The nearest base (below Event) declaring ``type`` decides: a generic one
    (`Joined`) declaring it a str makes its forms and subclasses free too;
    any other base leaves each subclass its own literal, as before.
    """
    for base in cls.__mro__[1:]:
        if base is Event or not (isinstance(base, type) and issubclass(base, Event)):
            continue
        declared = inspect.get_annotations(base).get("type")
        if declared is None:
            continue
        origin: Any = None if isinstance(declared, str) else typing.get_origin(declared)
        literal = "Literal[" in declared if isinstance(declared, str) else origin is Literal
        generic = getattr(base, "__pydantic_generic_metadata__", {}).get("parameters")
        return not literal and bool(generic)
    return False


def event_classes(schema: Schema) -> tuple[type[Event], ...]:
    """Return the event classes of a schema: a class, a union of classes, or a tuple of them.

    >>> class A(Event): pass
    >>> class B(Event): pass
    >>> names = [c.__name__ for c in event_classes(A | B)]
    >>> names
    ['A', 'B']
    """
    if isinstance(schema, type) and issubclass(schema, Event):
        return (schema,)
    if isinstance(schema, tuple) and schema:
        # (View, Purchase): the same as View | Purchase, spelled so that type
        # checkers see each class.
        found: list[type[Event]] = []
        for part in schema:
            found.extend(event_classes(part))
        return tuple(found)
    origin: Any = typing.get_origin(schema)
    if origin is Union or origin is types.UnionType:
        classes: list[type[Event]] = []
        for arg in typing.get_args(schema):
            classes.extend(event_classes(arg))
        return tuple(classes)
    msg = (
        f"schema must be an Event subclass, a union of them (View | Purchase) or a tuple "
        f"of them ((View, Purchase)); "
        f"got {schema!r}. Hint: declare `class MyEvent(Event): ...` and pass MyEvent."
    )
    raise TypeError(msg)


def never_carried(classes: tuple[type[Event], ...], cls: type) -> str | None:
    """Name the classes a stream carries when none of them is ``cls`` (or a subclass), else None.

    What a class filter, route, count or handler of ``cls`` would never see.

    >>> class A(Event): pass
    >>> class B(Event): pass
    >>> never_carried((A, B), Event), never_carried((A, B), int)
    (None, 'A, B')
    """
    if any(issubclass(c, cls) for c in classes):
        return None
    return ", ".join(c.__name__ for c in classes)


def type_name(cls: type[Event]) -> str:
    """Return the discriminator value of an event class."""
    default = cls.model_fields["type"].default
    return str(default)


def schema_adapter(schema: Schema) -> TypeAdapter[Any]:
    """Build one compiled validator for a schema (a discriminated union).

    The adapter parses JSON bytes straight into the right event class:

    >>> class Ping(Event): n: int = 0
    >>> class Pong(Event): n: int = 0
    >>> ta = schema_adapter(Ping | Pong)
    >>> type(ta.validate_json(b'{"type": "pong", "n": 2}')).__name__
    'Pong'
    """
    classes = event_classes(schema)
    seen: dict[str, type[Event]] = {}
    for cls in classes:
        name = type_name(cls)
        if name in seen and seen[name] is not cls:
            msg = (
                f"event classes {seen[name].__name__} and {cls.__name__} share the "
                f"type name {name!r}. Hint: give one of them "
                f"`type: Literal['other_name'] = 'other_name'`."
            )
            raise TypeError(msg)
        seen[name] = cls
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    union: Any = Union[tuple(classes)]  # noqa: UP007 - built from a tuple
    tagged: Any = Annotated[union, Field(discriminator="type")]
    return TypeAdapter(tagged)
