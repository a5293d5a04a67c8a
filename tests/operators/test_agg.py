"""Each aggregator against a direct computation, merges exact, fields checked."""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from operators import Event, agg
from operators._windowing import make_adder, make_spreader


class Reading(Event):
    sensor: str
    value: float
    note: str = ""
    at: datetime | None = None


def run_agg(
    a: agg.Aggregator, values: list[Any], split: int | None = None, *, same_time: bool = False
) -> Any:
    """Add values (their index as time, or all at 0); with split, add two halves, then merge."""

    def fold(part: list[tuple[int, Any]]) -> Any:
        acc = a.create()
        for ts, v in part:
            acc = a.add(acc, v, 0.0 if same_time else float(ts), None)
        return acc

    indexed = list(enumerate(values))
    if split is None:
        return a.result(fold(indexed))
    return a.result(a.merge(fold(indexed[:split]), fold(indexed[split:])))


VALUES = [random.Random(3).uniform(-50, 150) for _ in range(2001)]


@pytest.mark.parametrize("split", [None, 0, 700, 2001])
def test_builtins_against_direct_computation(split: int | None) -> None:
    assert run_agg(agg.count(), VALUES, split) == len(VALUES)
    assert run_agg(agg.sum("v"), VALUES, split) == pytest.approx(sum(VALUES))
    assert run_agg(agg.mean("v"), VALUES, split) == pytest.approx(statistics.fmean(VALUES))
    assert run_agg(agg.min("v"), VALUES, split) == min(VALUES)
    assert run_agg(agg.max("v"), VALUES, split) == max(VALUES)
    assert run_agg(agg.first("v"), VALUES, split) == VALUES[0]
    assert run_agg(agg.last("v"), VALUES, split) == VALUES[-1]
    ints = [int(v) % 37 for v in VALUES]
    assert run_agg(agg.count_distinct("v"), ints, split) == len(set(ints))
    expected_top = sorted(Counter(ints).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert run_agg(agg.top_k("v", 3), ints, split) == expected_top
    assert sorted(run_agg(agg.collect("v"), VALUES, split)) == sorted(VALUES)


def test_quantile_takes_numbers_not_text_that_reads_as_one() -> None:
    """float("5") made a text 5 a number in quantile, where sum and mean refuse it."""
    q = agg.quantile("v", 0.5)
    assert q.admit(5) == 5.0 and q.admit(Decimal("2.5")) == 2.5
    for text in ("5", b"5"):
        with pytest.raises(TypeError, match=r"quantile\(v, 0.5\) takes numbers; got"):
            q.admit(text)
    with pytest.raises(TypeError):
        agg.sum("v").add(agg.sum("v").create(), "5", 0.0, None)


def test_empty_aggregates() -> None:
    assert run_agg(agg.mean("v"), []) is None
    assert run_agg(agg.min("v"), []) is None
    assert run_agg(agg.quantile("v", 0.5), []) is None
    assert run_agg(agg.first(), []) is None


@pytest.mark.parametrize("q", [0.01, 0.5, 0.95, 0.99])
def test_quantile_within_documented_relative_error(q: float) -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(3, 1) for _ in range(20_000)]
    for split in (None, 9_000):
        got = run_agg(agg.quantile("v", q), values, split)
        ordered = sorted(values)
        # Any rank near q is a true quantile; the sketch is within 1% of one of them.
        low = ordered[max(0, int(q * (len(values) - 1)) - 1)]
        high = ordered[min(len(values) - 1, int(q * (len(values) - 1)) + 1)]
        assert low * 0.99 <= got <= high * 1.01


def test_count_of_one_class_and_first_by_time() -> None:
    class Other(Event):
        pass

    a = agg.count(Reading)
    acc = a.create()
    for event in (Reading(sensor="s", value=1), Other(), Reading(sensor="s", value=2)):
        acc = a.add(acc, event, 0.0, event)
    assert a.result(acc) == 2
    f = agg.first("v")
    acc = f.create()
    for ts, v in ((5.0, "late"), (1.0, "early"), (3.0, "middle")):
        acc = f.add(acc, v, ts, None)
    assert f.result(acc) == "early"


def test_fields_are_checked_against_the_model() -> None:
    agg.sum("value").check((Reading,), "s")
    agg.count_distinct("note").check((Reading,), "s")
    with pytest.raises(
        ValueError,
        match=r"step 's' \(aggregate\): sum\(amount\) reads field "
        r"'amount', which Reading does not have; its fields are",
    ):
        agg.sum("amount").check((Reading,), "s")
    with pytest.raises(
        TypeError,
        match=r"mean\(note\) needs a numeric field, but Reading.note is "
        r"str; the numeric fields of Reading are \['value'\]",
    ):
        agg.mean("note").check((Reading,), "s")
    with pytest.raises(TypeError, match=r"sum\(field\): field must be a field name; got 3"):
        agg.sum(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"quantile: q must be between 0 and 1; got 1.5"):
        agg.quantile("value", 1.5)
    with pytest.raises(ValueError, match=r"quantile: relative_accuracy must be in \(0, 1\)"):
        agg.quantile("value", 0.5, relative_accuracy=0)
    for odd in (0, True):  # True was a k of 1
        with pytest.raises(ValueError, match=rf"top_k: k must be a positive int; got {odd!r}"):
            agg.top_k("note", odd)
    agg.count(Event).check((Reading,), "s")  # a base class of the stream's
    with pytest.raises(
        TypeError,
        match=r"step 's' \(aggregate\): count\(Stocked\) counts Stocked events, but the stream "
        r"carries Reading, never Stocked: it would be 0 in every result\. Hint: count one of",
    ):
        agg.count(Stocked).check((Reading,), "s")
    with pytest.raises(TypeError, match=r"count\(cls\): cls must be an event class; got 'x'"):
        agg.count("x")  # type: ignore[arg-type]


class Shelf(BaseModel):
    row: int = 0


class Stocked(Event):
    tags: list[str]
    shelf: Shelf = Shelf()
    extra: dict[str, int]
    maybe: Shelf | None = None
    either: str | list[str] = ""
    pair: tuple[str, int] = ("", 0)
    anything: Any = None


def test_values_no_set_can_hold_or_no_order_can_rank_are_refused_at_build() -> None:
    """count_distinct and top_k of a field no set holds, max or min of one with no order.

    Each took every event as a dead letter at run time (unhashable type, '<' not
    supported). A union with one usable part, a tuple and Any are taken.
    """
    for bad, field, cannot in [
        (agg.count_distinct, "tags", "list[str], whose values no set can hold"),
        (lambda f: agg.top_k(f, 2), "shelf", "Shelf, whose values no set can hold"),
        (agg.count_distinct, "extra", "dict[str, int], whose values no set can hold"),
        (agg.max, "shelf", "Shelf, whose values have no order"),
        (agg.min, "maybe", "Shelf | None, whose values have no order"),
        (lambda f: agg.top_k(f, 2), "maybe", "Shelf | None, whose values no set can hold"),
        (agg.max, "extra", "dict[str, int], whose values have no order"),
    ]:
        shown = re.escape(f"Stocked.{field} is {cannot}")
        with pytest.raises(TypeError, match=rf"step 's' \(aggregate\): .*{shown}"):
            bad(field).check((Stocked,), "s")
    for good, field in [
        (agg.count_distinct, "either"),
        (agg.count_distinct, "pair"),
        (agg.count_distinct, "anything"),
        (agg.max, "tags"),
        (agg.max, "either"),
        (agg.min, "anything"),
        (agg.collect, "shelf"),
        (agg.first, "extra"),
    ]:
        good(field).check((Stocked,), "s")


class Spread(agg.Aggregator):
    """A user's own aggregator: max - min of a field."""

    numeric = True
    result_type = float

    def __init__(self, field: str) -> None:
        self.field = field

    def create(self) -> tuple[float, float] | None:
        return None

    def add(self, acc: Any, value: Any, ts: float, event: Any) -> Any:
        return (value, value) if acc is None else (min(acc[0], value), max(acc[1], value))

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return b if a is None else a
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, acc: Any) -> float:
        return 0.0 if acc is None else acc[1] - acc[0]


def test_a_users_own_aggregator_follows_the_protocol() -> None:
    assert run_agg(Spread("v"), VALUES) == max(VALUES) - min(VALUES)
    assert run_agg(Spread("v"), VALUES, 500) == max(VALUES) - min(VALUES)


def test_generated_adder_changes_nothing_when_a_value_fails() -> None:
    aggs = [agg.count(), agg.sum("value")]
    add = make_adder(aggs)
    accs = [g.create() for g in aggs]
    add(accs, Reading(sensor="s", value=2), 0.0)
    with pytest.raises(AttributeError):
        add(accs, object(), 0.0)
    assert [g.result(a) for g, a in zip(aggs, accs, strict=True)] == [1, 2.0]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(-5, 5), min_size=1, max_size=20))
def test_generated_min_and_max_equal_their_add_and_refuse_what_they_cannot_compare(
    values: list[int],
) -> None:
    class Box:
        def __init__(self, v: Any) -> None:
            self.v = v

    aggs = [agg.max("v"), agg.min("v"), agg.max("v")]
    add = make_adder(aggs)
    accs = [g.create() for g in aggs]
    for v in values:
        add(accs, Box(v), 0.0)
    assert accs == [max(values), min(values), max(values)]
    assert accs == [run_agg(g, values) for g in aggs]
    with pytest.raises(ValueError, match="cannot take None"):
        add(accs, Box(None), 0.0)  # None is neither above nor below a number
    assert accs == [max(values), min(values), max(values)]
    add(accs, Box("a"), 0.0)  # text and numbers do not compare: placed by type name
    assert accs == ["a", min(values), "a"]
    assert accs == [run_agg(g, [*values, "a"]) for g in aggs]


def test_generated_spreads_place_a_number_and_a_text_as_add_does() -> None:
    """The inline max compares at once: a number and a text raised there, where add places them."""
    aggs = [agg.max("v"), agg.min("v"), agg.count()]
    spread = make_spreader(aggs)
    one, two = [g.create() for g in aggs], [g.create() for g in aggs]
    spread([one, two], SimpleNamespace(v=3), 0.0)
    spread([one], SimpleNamespace(v="a"), 0.0)
    spread([one, two], SimpleNamespace(v=1), 0.0)
    assert (one, two) == (["a", 1, 3], [3, 1, 2])
    assert one[:2] == [run_agg(g, [3, "a", 1]) for g in aggs[:2]]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-9, 9)),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 1000),
)
def test_sum_and_mean_do_not_depend_on_order_or_grouping(values: list[float], seed: int) -> None:
    # Exact: the sum of the exact values, rounded once, however they were added up.
    exact = sum(Fraction(v) for v in values)
    if abs(exact) >= 2**1023:
        return  # beyond the largest float: an overflow either way
    shuffled = list(values)
    random.Random(seed).shuffle(shuffled)
    cut = random.Random(seed).randrange(len(values) + 1)
    for g, want in ((agg.sum("x"), float(exact)), (agg.mean("x"), float(exact / len(values)))):
        one = g.create()
        for v in values:
            one = g.add(one, v, 0.0, None)
        left, right = g.create(), g.create()
        for v in shuffled[:cut]:
            left = g.add(left, v, 0.0, None)
        for v in shuffled[cut:]:
            right = g.add(right, v, 0.0, None)
        assert g.result(one) == g.result(g.merge(right, left)) == want


def test_top_k_ties_go_in_the_values_order() -> None:
    # by their text, 10 came before 2
    assert run_agg(agg.top_k("v", 2), [10, 2, 2, 10, 1], None) == [(2, 2), (10, 2)]
    assert run_agg(agg.top_k("v", 3), [3.5, 10, 2.25], 1) == [(2.25, 1), (3.5, 1), (10, 1)]
    # values that do not compare: by type name, then value, the same on every run
    assert run_agg(agg.top_k("v", 3), [1, "a", 1.5], 2) == [(1, 1), (1.5, 1), ("a", 1)]


@pytest.mark.parametrize("split", [None, 1, 3])
def test_top_k_shows_equal_values_of_two_types_alike_whatever_their_order(
    split: int | None,
) -> None:
    """1 and 1.0 are one value, shown as whichever came first: the schedule picked it."""
    values = [1, 2, 1.0, 1, 2.0]
    for order in (values, values[::-1], [2.0, 1.0, 2, 1, 1]):
        shown = run_agg(agg.top_k("v", 2), order, split)
        assert repr(shown) == "[(1.0, 3), (2.0, 2)]"  # (1, 3) == (1.0, 3): repr tells


def test_top_k_resumes_from_an_accumulator_an_earlier_evflow_saved() -> None:
    top = agg.top_k("v", 2)
    saved = Counter({"a": 2, "b": 1})  # what top_k's accumulator was
    assert top.result(top.add(saved, "b", 0.0, None)) == [("a", 2), ("b", 2)]
    assert top.result(top.merge(Counter({"a": 1}), top.add(top.create(), "a", 0.0, None))) == [
        ("a", 2)
    ]


class _Vector:
    """A value like an array: comparing gives something that is neither true nor false."""

    def __init__(self, *xs: int) -> None:
        self.xs = xs

    def __eq__(self, other: object) -> Any:
        return _Ambiguous()

    def __lt__(self, other: object) -> Any:
        return _Ambiguous()

    def __gt__(self, other: object) -> Any:
        return _Ambiguous()

    def __repr__(self) -> str:
        return f"_Vector{self.xs}"

    __hash__ = None  # type: ignore[assignment]


class _Ambiguous:
    def __bool__(self) -> bool:
        raise ValueError("the truth value of an array is ambiguous")


def test_values_of_one_time_that_compare_to_no_truth_are_placed_by_their_text() -> None:
    # first, last and collect tell values of one time apart by value: values like
    # arrays, whose comparisons are neither true nor false, made every such event a
    # dead letter
    a, b = _Vector(3, 4), _Vector(1, 2)
    assert run_agg(agg.first("v"), [a, b], None, same_time=True) is b
    assert run_agg(agg.last("v"), [a, b], None, same_time=True) is a
    assert [id(v) for v in run_agg(agg.collect("v"), [a, b], 1, same_time=True)] == [id(b), id(a)]
