from __future__ import annotations

import hashlib

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
    with pytest.raises(ValueError, match=r"retry attempts must be at least 1; got 0"):
        retry(0)
    with pytest.raises(ValueError, match=r"retry backoff must be zero or positive seconds"):
        retry(2, backoff=-1)
