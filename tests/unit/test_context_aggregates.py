"""The aggregate plan: bucket widths, window sums with the straddling bucket, retention,
last values, and the configuration that declares them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.config import AggregatesConfig, ConfigError, Settings, load_settings
from services.context.aggregates import AggregatePlan, BatchAggregates, bucket_start, width_for

NOW = datetime(2026, 11, 23, 12, 2, 30, tzinfo=UTC)


def test_each_window_gets_the_widest_width_with_six_buckets() -> None:
    assert width_for(3600) == 300  # 1h: 12 x 5 min
    assert width_for(86400) == 3600  # 24h: 24 x 1 h
    assert width_for(7 * 86400) == 86400  # 7d: 7 x 1 day
    assert width_for(30 * 86400) == 86400
    assert width_for(600) == 300  # shorter than 6 buckets: the finest width
    plan = AggregatePlan()
    assert plan.widths == (300, 3600, 86400)
    # A width is kept as long as its longest window needs it (plus one bucket).
    assert plan.retention_s == {300: 3600 + 300, 3600: 86400 + 3600, 86400: 31 * 86400}


def test_buckets_align_to_their_width_in_utc() -> None:
    noon = int(datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp())
    assert bucket_start(NOW, 300) == noon
    assert bucket_start(NOW, 3600) == noon
    assert bucket_start(NOW, 86400) == noon - 12 * 3600


def test_an_event_goes_only_into_buckets_still_read() -> None:
    plan = AggregatePlan()
    assert [w for w, _ in plan.buckets(NOW - timedelta(minutes=30), NOW)] == [300, 3600, 86400]
    assert [w for w, _ in plan.buckets(NOW - timedelta(hours=3), NOW)] == [3600, 86400]
    assert [w for w, _ in plan.buckets(NOW - timedelta(days=3), NOW)] == [86400]
    assert plan.buckets(NOW - timedelta(days=40), NOW) == []


def test_the_bucket_straddling_a_window_start_counts_in_proportion() -> None:
    plan = AggregatePlan(AggregatesConfig(windows=("1h",)))
    # 1h window from 11:02:30: the bucket 11:00-11:05 is half inside.
    eleven = int(datetime(2026, 11, 23, 11, 0, tzinfo=UTC).timestamp())
    rows = [
        ("view", 300, eleven, 4, 40.0),
        ("view", 300, eleven + 300, 1, 10.0),
        ("view", 300, eleven - 300, 9, 90.0),  # outside
        ("view", 300, eleven + 3600, 1, 1.0),  # current
    ]
    window = plan.window_sums(rows, NOW)["1h"]["view"]
    assert window.count == 4  # 2 (half of 4) + 1 + 1
    assert window.value_sum == pytest.approx(20 + 10 + 1)
    # Nothing in the window: no entry at all.
    assert plan.window_sums(rows[2:3], NOW) == {}


def test_batch_folds_events_per_key() -> None:
    plan = AggregatePlan(AggregatesConfig(windows=("1h",), last_values=("sku",)))
    batch = BatchAggregates(plan, NOW)
    for minutes, sku in ((1, "a"), (3, "b"), (2, "c"), (90, "old")):
        batch.add_event(
            "p1",
            "buy",
            "web",
            NOW - timedelta(minutes=minutes),
            {"sku": sku, "value": 2, "nested": {"x": 1}},
        )
    (counter,) = batch.counters.values()
    assert (counter.count, counter.value_sum) == (4, 8.0)
    assert counter.last == NOW - timedelta(minutes=1)
    assert counter.first == NOW - timedelta(minutes=90)
    assert plan.last_values(counter.last_attributes) == {"sku": "a"}
    # 5-minute buckets of the 1h window: the 90-minute-old event is in none of them.
    noon = int(datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp())
    assert batch.bucket_rows() == [
        ("p1", "buy", 300, noon - 300, 1, 2.0),
        ("p1", "buy", 300, noon, 2, 4.0),
    ]
    assert batch.channels[("p1", "web")].events == 4
    # By default every scalar attribute is kept, nested ones never.
    assert AggregatePlan().last_values({"a": 1, "b": "x", "c": [1], "d": {"e": 1}}) == {
        "a": 1,
        "b": "x",
    }


def test_aggregates_are_declared_in_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    assert Settings().aggregates.windows == ("1h", "24h", "7d", "30d")
    monkeypatch.setenv(
        "NEXTBEST_AGGREGATES", '{"windows": ["15m", "2d"], "event_types": ["page_view"]}'
    )
    settings = load_settings()
    assert settings.aggregates.windows == ("15m", "2d")
    assert settings.aggregates.event_types == ("page_view",)
    path = f"{tmp_path}/aggregates.yaml"
    with open(path, "w") as out:
        out.write("windows: [1h]\nlast_values: [product]\nvalue_attribute: amount\n")
    monkeypatch.setenv("NEXTBEST_AGGREGATES", path)
    assert load_settings().aggregates == AggregatesConfig(
        windows=("1h",), last_values=("product",), value_attribute="amount"
    )
    for bad, message in (
        ('{"windows": ["1x"]}', "not a duration"),
        ('{"windows": ["1m"]}', "between 5m and 400d"),
        ('{"windows": ["1h", "1h"]}', "distinct"),
        ('{"windowz": ["1h"]}', "NEXTBEST_AGGREGATES"),
        ("/no/such/file.yaml", "cannot read"),
    ):
        monkeypatch.setenv("NEXTBEST_AGGREGATES", bad)
        with pytest.raises(ConfigError, match=message):
            load_settings()
    monkeypatch.delenv("NEXTBEST_AGGREGATES")
    monkeypatch.setenv("NEXTBEST_DEFAULT_PERSONALIZATION", "sometimes")
    with pytest.raises(ConfigError, match="NEXTBEST_DEFAULT_PERSONALIZATION"):
        load_settings()
