"""The catalog pipelines run with no set-up and give the same results on any worker count."""

from __future__ import annotations

from collections import Counter

from pipelines import catalog, testing
from pipelines.catalog import clickstream
from tests.helpers import multiset


def test_catalog_lists_and_loads() -> None:
    assert "clickstream" in catalog.NAMES
    assert catalog.load("clickstream").name == "clickstream"
    assert catalog.describe("clickstream").startswith("Clickstream:")


def test_clickstream_exercises_every_operator_and_reconciles() -> None:
    p = clickstream.build(count=4000)
    kinds = {n.kind for n in p.graph}
    assert kinds == {"read", "merge", "filter", "key_by", "forward", "map", "flat_map", "write"}
    one = testing.run(p)
    two = testing.run(p, workers=2)
    assert one.read == 5000 and one.reconciles and two.reconciles
    for sink in ("alerts", "counts"):
        assert multiset(one[sink]) == multiset(two[sink]) and one[sink]
    dead = Counter(d.kind for d in one.dead_letters)
    assert dead["parse"] > 0 and dead["validation"] > 0 and dead["user_error"] > 0
    assert all(a.amount_eur > 0 for a in one["alerts"])
    assert 0.02 < one.dead / one.read < 0.08  # "a few percent" bad records
    assert one.counts["filter_is_human"].filtered > 0


def test_clickstream_alerts_follow_the_threshold() -> None:
    low = testing.run(clickstream.build(count=2000, threshold=10.0))
    high = testing.run(clickstream.build(count=2000, threshold=1000.0))
    assert len(low["alerts"]) > len(high["alerts"])


def test_unknown_catalog_name() -> None:
    import pytest

    with pytest.raises(KeyError, match=r"no catalog pipeline 'nope'; the catalog has"):
        catalog.load("nope")
