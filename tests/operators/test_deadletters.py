from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from operators import PAYLOAD_LIMIT, DeadLetter, ErrorPolicy, as_policy, payload_text, retry
from tests.helpers import View


def test_long_payload_is_truncated_with_size_and_hash() -> None:
    payload = "é" * (PAYLOAD_LIMIT + 10)
    dl = DeadLetter.build(
        pipeline="p", step="s", kind="parse", error_type="E", message="m", payload=payload
    )
    assert len(dl.payload) == PAYLOAD_LIMIT and dl.truncated
    assert dl.payload_size == PAYLOAD_LIMIT + 10
    assert dl.payload_sha256 == hashlib.sha256(payload.encode()).hexdigest()


def test_short_payload_is_whole() -> None:
    dl = DeadLetter.build(
        pipeline="p", step="s", kind="parse", error_type="E", message="m", payload="abc"
    )
    assert dl.payload == "abc" and not dl.truncated and dl.payload_size == 3


def test_payload_text_of_each_form() -> None:
    assert payload_text(b"\xffa") == "\ufffda"
    assert payload_text("x") == "x"
    assert '"user":"u"' in payload_text(View(user="u"))
    assert payload_text(3) == "3"


def test_policies() -> None:
    assert as_policy("skip") == ErrorPolicy("skip")
    assert retry(2, backoff=0.5) == ErrorPolicy("retry", 2, 0.5)
    with pytest.raises(ValueError, match=r"unknown error policy 'ignore'. Hint: use"):
        as_policy("ignore")  # type: ignore[arg-type]
    # 2.5 attempts ran 3 times, a backoff of nan failed in the middle of the run.
    for odd in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"retry attempts must be a whole .*; got {odd!r}"):
            retry(odd)  # type: ignore[arg-type]
    for odd in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"retry backoff must be zero or positive seconds"):
            retry(2, backoff=odd)


def test_a_dict_records_payload_is_json_that_can_be_sent_again() -> None:
    # A dict's payload was its Python repr ("{'user': 'ada', 'paid': True}"), which no
    # JSON reader takes back.
    from datetime import datetime, timezone

    from pipelines import Pipeline, sinks, sources

    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows: list[Any] = [
        {"user": "ada", "paid": True, "at": when, "n": None},
        [1, "two", 3.5],
        {(1, 2): "a tuple key"},
    ]

    def fail(record: Any) -> Any:
        raise ValueError("no")

    result = Pipeline("again").read(sources.memory(rows)).map(fail).write(sinks.memory("o")).run()
    first, second, third = (d.payload for d in result.dead_letters)
    assert json.loads(first) == {"user": "ada", "paid": True, "at": when.isoformat(), "n": None}
    assert json.loads(second) == [1, "two", 3.5]
    assert third == "{(1, 2): 'a tuple key'}"  # no JSON holds it: shown as Python


def test_a_name_a_dead_letter_does_not_have_says_which_field_holds_it() -> None:
    """``letter.reason`` or ``letter.record`` was a bare AttributeError."""
    from operators import DeadLetter

    letter = DeadLetter.build(
        pipeline="p",
        step="parse",
        kind="parse",
        error_type="ValueError",
        message="bad",
        payload="{",
    )
    for asked, told in [
        ("reason", "message holds what went wrong"),
        ("error", "message holds what went wrong"),
        ("record", "payload holds the record as text"),
        ("stage", "step names the step it came from"),
        ("timestamp", "event_time holds the record's event time"),
        ("zzz", "its fields are pipeline, step, kind, error_type, message"),
    ]:
        with pytest.raises(AttributeError, match=rf"^a DeadLetter has no '{asked}'\. Hint: {told}"):
            getattr(letter, asked)
    assert not hasattr(letter, "__len__") and letter.message == "bad"
