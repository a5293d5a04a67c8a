from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import pytest
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

from operators import Event, event_classes, schema_adapter, type_name
from tests.helpers import Purchase, View


def test_event_with_no_arguments_is_valid_with_id_and_aware_time() -> None:
    class Ping(Event):
        pass

    a, b = Ping(), Ping()
    assert a.type == "ping" and a.get_type() == "ping"
    assert len(a.id) == 32 and a.id != b.id
    assert a.time.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - a.time).total_seconds()) < 5


def test_declared_literal_type_is_kept() -> None:
    assert View(user="u").type == "view"
    assert type_name(Purchase) == "purchase"


def test_events_are_immutable() -> None:
    v = View(user="u")
    with pytest.raises(ValidationError):
        v.user = "other"  # type: ignore[misc]


def test_naive_time_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        View(user="u", time=datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    assert info.value.errors()[0]["type"] == "timezone_aware"


def test_union_parses_each_record_into_its_class_in_one_step() -> None:
    ta = schema_adapter(View | Purchase)
    view = ta.validate_json(b'{"type": "view", "user": "a"}')
    buy = ta.validate_json(b'{"type": "purchase", "user": "a", "amount": "2.5"}')
    assert isinstance(view, View) and isinstance(buy, Purchase) and buy.amount == 2.5
    with pytest.raises(ValidationError) as info:
        ta.validate_json(b'{"type": "refund", "user": "a"}')
    assert info.value.errors()[0]["type"] == "union_tag_invalid"


def test_event_classes_of_a_union_and_bad_schema() -> None:
    assert event_classes(View | Purchase) == (View, Purchase)
    with pytest.raises(TypeError, match=r"schema must be an Event subclass, a union"):
        event_classes(int)


def test_two_classes_with_one_type_name_are_refused() -> None:
    class Other(Event):
        type: Literal["view"] = "view"

    with pytest.raises(TypeError, match=r"View and Other share the type name 'view'"):
        schema_adapter(View | Other)


def test_help_on_an_event_class_starts_with_evflow_words() -> None:
    import pydoc

    class Refund(Event):
        amount: float
        reason: str = ""

    class Documented(Event):
        """Mine."""

    text = pydoc.render_doc(Refund, renderer=pydoc.plaintext)
    words = "An evflow event of type 'refund', with amount: float, reason: str"
    assert words in text and text.index(words) < text.index("Method resolution order")
    assert Documented.__doc__ == "Mine."


def test_a_tuple_of_classes_is_a_schema_like_their_union() -> None:
    class Ping(Event):
        n: int = 0

    class Pong(Event):
        n: int = 0

    assert event_classes((Ping, Pong)) == event_classes(Ping | Pong) == (Ping, Pong)
    parsed = schema_adapter((Ping, Pong)).validate_json(b'{"type": "pong", "n": 3}')
    assert type(parsed) is Pong and parsed.n == 3
    with pytest.raises(TypeError, match=r"or a tuple of them"):
        event_classes((Ping, int))


class Order(Event):
    amount: int
    tags: list[str] = Field(default_factory=list)


def test_a_copy_validates_what_it_changes() -> None:
    o = Order(id="o1", amount=1, tags=["a"], time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    c = o.model_copy(update={"amount": "2", "time": "2026-01-02T00:00:00Z"})
    jan2 = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert (c.amount, c.time, c.id, c.tags) == (2, jan2, "o1", ["a"])
    assert o.amount == 1  # the original is as it was
    with pytest.raises(ValidationError) as info:
        o.model_copy(update={"amount": "x"})
    assert info.value.errors()[0]["loc"] == ("amount",)
    with pytest.raises(ValidationError) as info:
        o.model_copy(update={"time": datetime(2026, 1, 2)})  # noqa: DTZ001 - the point
    assert info.value.errors()[0]["type"] == "timezone_aware"
    with pytest.raises(ValidationError):
        o.model_copy(update={"type": "refund"})  # the class's literal type


def test_a_copy_refuses_a_name_that_is_no_field_and_says_the_nearest() -> None:
    o = Order(amount=1)
    nearest = r"'amout' is not a field of Order\. Hint: did you mean 'amount'\?"
    with pytest.raises(ValueError, match=nearest):
        o.model_copy(update={"amout": 2})
    with pytest.raises(ValueError, match=r"its fields: \['type', 'id', 'time', 'amount', 'tags'\]"):
        o.model_copy(update={"zzz": 2})


def test_a_copy_keeps_extra_fields_where_the_class_allows_them() -> None:
    class Loose(Event):
        model_config = ConfigDict(extra="allow")
        n: int

    loose = Loose.model_validate({"n": 1, "note": "x"})
    c = loose.model_copy(update={"n": "2", "other": 3})
    assert (c.n, c.model_extra) == (2, {"note": "x", "other": 3})


def test_a_copy_keeps_private_attributes() -> None:
    class Tracked(Event):
        n: int
        _seen: int = PrivateAttr(default=0)

    t = Tracked(n=1)
    t._seen = 5
    assert t.model_copy(update={"n": 2})._seen == 5


def test_a_copy_keeps_which_fields_were_set_and_copies_deep_when_asked() -> None:
    o = Order(amount=1, tags=["a"])
    c = o.model_copy(update={"amount": 2})
    assert c.model_fields_set == {"amount", "tags"}
    assert c.model_dump(exclude_unset=True) == {"amount": 2, "tags": ["a"]}
    deep = o.model_copy(update={"amount": 3}, deep=True)
    assert deep.tags == ["a"] and deep.tags is not o.tags
    assert o.model_copy() == o and o.model_copy() is not o


def test_an_event_class_whose_time_takes_no_timezone_is_refused_when_defined() -> None:
    # `time: datetime` took "2026-01-01T00:00:00" as a naive time: every such event
    # was a dead letter at the first step on event time, found only when running.
    from datetime import datetime

    import pytest
    from pydantic import AwareDatetime

    with pytest.raises(
        TypeError,
        match=r"event class Click declares time: datetime, which takes times without a "
        r"timezone; evflow's event times are aware\. Hint: from pydantic import AwareDatetime",
    ):

        class Click(Event):
            time: datetime

    with pytest.raises(TypeError, match=r"event class Tick gives time the default datetime\."):

        class Tick(Event):
            time: AwareDatetime = datetime(2026, 1, 1)  # type: ignore[assignment]  # noqa: DTZ001

    class Required(Event):
        time: AwareDatetime

    assert Required(time="2026-01-01T00:00:00Z").time.tzinfo is not None


def test_a_name_that_is_no_field_is_refused_when_an_event_is_made_in_code() -> None:
    """``Purchase(user="a", amout=3)`` in a step's function.

    pydantic dropped the misspelt name without a word: the purchase had the default
    amount (or failed for a missing one, naming the field it was given instead).
    """
    from pydantic import AliasChoices, model_validator

    class Sale(Event):
        user: str = ""
        amount: float = 0.0
        shop: str = Field("main", alias="Shop")

    with pytest.raises(
        TypeError,
        match=r"^Sale\(\) got 'amout', which is not a field of Sale \(pydantic would drop it "
        r"without a word\)\. Hint: did you mean 'amount'\?$",
    ):
        Sale(user="a", amout=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"got 'zzz'.*its fields: \['type', 'id', 'time'\]"):
        Event(zzz=1)  # type: ignore[call-arg]
    assert Sale(user="a", Shop="north").shop == "north"  # an alias is a name it takes
    # records parsed from text or dicts leave unknown keys out, as before
    parsed = schema_adapter(Sale).validate_python({"user": "a", "amount": 2, "note": "x"})
    assert (parsed.user, parsed.amount) == ("a", 2.0)
    assert schema_adapter(Sale).validate_json(b'{"user": "b", "colour": 1}').user == "b"

    class Loose(Event):
        model_config = ConfigDict(extra="allow")
        n: int = 0

    assert Loose(n=1, note="x").model_extra == {"note": "x"}  # type: ignore[call-arg]

    class Strict(Event):
        model_config = ConfigDict(extra="forbid")
        n: int = 0

    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Strict(n=1, note="x")  # type: ignore[call-arg]

    class Renamed(Event):
        n: int = 0

        @model_validator(mode="before")
        @classmethod
        def old_name(cls, data: object) -> object:
            if isinstance(data, dict) and "count" in data:
                data = {**data, "n": data.pop("count")}
            return data

    assert Renamed(count=3).n == 3  # type: ignore[call-arg]

    class OwnInit(Event):
        n: int = 0

        def __init__(self, **data: object) -> None:
            super().__init__(**data)

    # pydantic calls a class's own __init__ on parsed records too: they keep leaving
    # unknown keys out
    assert schema_adapter(OwnInit).validate_json(b'{"n": 2, "colour": 1}').n == 2

    class Choices(Event):
        n: int = Field(0, validation_alias=AliasChoices("n", "number"))

    assert Choices(number=4).n == 4  # type: ignore[call-arg]


def test_a_misspelt_name_in_a_steps_function_is_a_dead_letter_naming_it() -> None:
    from pipelines import Pipeline, sinks, sources

    class Alert(Event):
        user: str = ""

    result = (
        Pipeline("a")
        .read(sources.memory([View(user="ada")]))
        .map(lambda v: Alert(usr=v.user))  # type: ignore[call-arg]
        .write(sinks.memory("alerts"))
        .run()
    )
    assert result["alerts"] == [] and result.reconciles
    [letter] = result.dead_letters
    assert (letter.kind, letter.error_type) == ("user_error", "TypeError")
    assert "Alert() got 'usr'" in letter.message and "did you mean 'user'?" in letter.message
