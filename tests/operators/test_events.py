from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import pytest
from pydantic import ValidationError

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
