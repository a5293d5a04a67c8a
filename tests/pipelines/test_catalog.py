"""The catalog pipelines run with no set-up and give the same results on any worker count."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipelines import catalog, testing
from pipelines.catalog import clickstream
from tests.helpers import multiset


def test_catalog_lists_and_loads() -> None:
    assert "clickstream" in catalog.NAMES and "sensors" in catalog.NAMES
    assert catalog.load("clickstream").name == "clickstream"
    assert catalog.describe("clickstream").startswith("Clickstream:")


def test_clickstream_exercises_every_operator_and_reconciles() -> None:
    p = clickstream.build(count=4000)
    kinds = {n.kind for n in p.graph}
    assert kinds == {
        "read",
        "merge",
        "filter",
        "key_by",
        "forward",
        "map",
        "flat_map",
        "write",
        "aggregate",
    }
    one = testing.run(p)
    two = testing.run(p, workers=2)
    assert one.read == 5000 and one.reconciles and two.reconciles
    for sink in ("alerts", "counts", "per_user"):
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


def test_sensors_same_results_on_1_2_and_4_workers() -> None:
    from pipelines.catalog import sensors

    p = sensors.build(count=6000)
    runs = [testing.run(p, workers=w) for w in (1, 2, 4)]
    for r in runs:
        assert r.reconciles and r.open_windows == 0 and r.read == 6000

    def rows(r: Any, sink: str) -> Counter[Any]:
        if sink == "late_readings":
            return multiset(r[sink])
        # means are sums of floats, whose last bits depend on the order of adding
        return Counter((w.key, w.start, round(w.mean, 9), w.peak, w.n) for w in r[sink])

    for sink in ("alerts", "stats", "late_readings"):
        assert runs[0][sink], sink
        assert rows(runs[0], sink) == rows(runs[1], sink) == rows(runs[2], sink)
    # exactly the readings an hour behind are late; nothing within the allowed delay is
    for late in runs[0]["late_readings"]:
        made = sensors.START.timestamp() + int(late.id[1:]) / 10
        assert made - late.at.timestamp() >= 3600 - 4


def test_orders_dispatch_by_type_with_per_order_state() -> None:
    from pipelines.catalog import orders

    p = orders.build(count=5000)
    runs = [testing.run(p, workers=w) for w in (1, 2, 4)]
    for r in runs:
        assert r.reconciles and r.read == 5000
    assert multiset(runs[0]["notifications"]) == multiset(runs[1]["notifications"])
    assert multiset(runs[0]["notifications"]) == multiset(runs[2]["notifications"])
    dead = Counter(d.kind for d in runs[0]["dead_letters"])
    assert dead["unhandled"] > 0 and dead["validation"] > 0 and dead["parse"] > 0
    refused = [d for d in runs[0]["dead_letters"] if d.kind == "user_error"]
    assert refused and all("cannot ship while" in d.message for d in refused)
    texts = Counter(n.text for n in runs[0]["notifications"])
    assert texts["order received"] > 0 and texts["ready to ship"] > 0
