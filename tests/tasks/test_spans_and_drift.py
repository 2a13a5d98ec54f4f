"""Spans (the newest, a pinned one, the next) and the drift distances the monitor uses."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from tasks.config import DriftConfig
from tasks.drift import categorical_distance, compare, numeric_distance, observe_values, table
from tasks.spans import SpanError, next_span, span_file
from tasks.steps.validate import standard_histogram


def test_the_newest_span_is_read_unless_one_is_pinned(tmp_path) -> None:
    source = str(tmp_path / "churn" / "span-{SPAN}.csv")
    with pytest.raises(SpanError, match="no span of data.source .* exists yet; add one with `kiln data add"):
        span_file(source)
    assert next_span(source) == (str(tmp_path / "churn" / "span-1.csv"), 1)
    (tmp_path / "churn").mkdir()
    for number in (1, 2, 10):
        (tmp_path / "churn" / f"span-{number}.csv").write_text("a\n1\n")
    (tmp_path / "churn" / "span-x.csv").write_text("a\n1\n")  # not a span: ignored
    assert span_file(source) == (str(tmp_path / "churn" / "span-10.csv"), 10), "numerically newest, not by name"
    assert span_file(source, 2) == (str(tmp_path / "churn" / "span-2.csv"), 2)
    with pytest.raises(SpanError, match=r"data.span 3: no such file .* \(spans: 1, 2, 10\)"):
        span_file(source, 3)
    assert next_span(source) == (str(tmp_path / "churn" / "span-11.csv"), 11)


def test_a_span_in_the_folder_name_is_refused(tmp_path) -> None:
    with pytest.raises(SpanError, match="may only appear in the file name"):
        span_file(str(tmp_path / "span-{SPAN}" / "data.csv"))


def _baseline(rng: np.random.Generator) -> statistics_pb2.DatasetFeatureStatistics:
    dataset = statistics_pb2.DatasetFeatureStatistics(num_examples=2000)
    numeric = dataset.features.add()
    numeric.path.step.append("monthly")
    numeric.num_stats.histograms.append(standard_histogram(rng.normal(50, 10, 2000)))
    category = dataset.features.add()
    category.path.step.append("plan")
    category.string_stats.common_stats.tot_num_values = 2000
    for value, count in (("basic", 1000), ("pro", 600), ("premium", 400)):
        category.string_stats.top_values.add(value=value, frequency=count)
    label = dataset.features.add()
    label.path.step.append("churned")
    return dataset


def test_the_same_distribution_is_below_the_thresholds_and_a_shifted_one_above() -> None:
    rng = np.random.default_rng(0)
    baseline = _baseline(rng)
    same = {"monthly": list(rng.normal(50, 10, 500)), "plan": ["basic"] * 250 + ["pro"] * 150 + ["premium"] * 100,
            "churned": ["yes"] * 500}
    results = compare(baseline, observe_values(baseline, same), DriftConfig(), skip={"churned"})
    assert [r.feature for r in results] == ["monthly", "plan"], "the label is not a feature"
    assert not any(r.drifted for r in results) and all(r.distance < 0.1 for r in results)
    shifted = {"monthly": list(rng.normal(80, 10, 500)), "plan": ["premium"] * 400 + ["basic"] * 100}
    results = {r.feature: r for r in compare(baseline, observe_values(baseline, shifted), DriftConfig(), skip={"churned"})}
    assert results["monthly"].drifted and results["monthly"].distance > 0.5
    assert results["plan"].drifted and results["plan"].distance == pytest.approx(0.6)
    tight = compare(baseline, observe_values(baseline, same), DriftConfig(features={"monthly": 1e-9}), skip=set())
    assert tight[0].drifted and tight[0].threshold == 1e-9, "a per-feature threshold replaces the default"
    assert "| monthly | numeric |" in table(tight)


def test_values_outside_the_baseline_range_count_in_its_end_buckets() -> None:
    histogram = standard_histogram(np.linspace(0, 1, 100))
    assert numeric_distance(histogram, np.full(50, 1000.0)) > 0.8
    assert numeric_distance(histogram, np.linspace(0, 1, 100)) == pytest.approx(0.0, abs=1e-9)


def test_a_new_category_counts_as_other_values() -> None:
    stats = statistics_pb2.StringStatistics()
    stats.common_stats.tot_num_values = 100
    stats.top_values.add(value="a", frequency=100)
    assert categorical_distance(stats, Counter({"b": 10})) == pytest.approx(1.0)


def test_a_feature_missing_from_the_span_is_noted_not_drifted() -> None:
    baseline = _baseline(np.random.default_rng(1))
    results = compare(baseline, observe_values(baseline, {"plan": ["basic"]}), DriftConfig(), skip={"churned"})
    monthly = next(r for r in results if r.feature == "monthly")
    assert monthly.distance is None and not monthly.drifted and monthly.note == "not in the span"


def test_an_image_feature_is_listed_but_not_compared():
    baseline = statistics_pb2.DatasetFeatureStatistics(num_examples=10)
    image = baseline.features.add()
    image.path.step.append("image")
    image.type = statistics_pb2.FeatureNameStatistics.BYTES
    image.bytes_stats.avg_num_bytes = 144
    [result] = compare(baseline, observe_values(baseline, {"image": [b"\x00" * 144]}), DriftConfig(), skip=set())
    assert (result.kind, result.distance, result.drifted) == ("image", None, False)
    assert result.note == "an image: its pixels are not compared"
