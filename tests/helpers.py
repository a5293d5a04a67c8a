"""Shared event classes and helpers for the tests."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from operators import Event


class View(Event):
    type: Literal["view"] = "view"
    user: str
    page: str = "/"


class Purchase(Event):
    type: Literal["purchase"] = "purchase"
    user: str
    amount: float


def multiset(items: Iterable[Any]) -> Counter[Any]:
    """Compare outputs regardless of order (events by their JSON)."""
    return Counter(i.model_dump_json() if isinstance(i, Event) else repr(i) for i in items)


def line(**record: Any) -> str:
    return json.dumps(record)


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []
