"""Drift of a span against the statistics of the data the champion was trained on, measured as TFDV
measures it: the Jensen-Shannon distance (base 2, 0..1) for numeric features, over the buckets of
the baseline's histogram; the L-infinity distance of the value frequencies for categorical ones,
over the baseline's top values plus one bucket for all other values."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from tensorflow_metadata.proto.v0 import statistics_pb2

from tasks.artifacts.drift import FeatureDrift
from tasks.config import DriftConfig

OTHER = "\x00other"  # the bucket of values outside the baseline's top values


def numeric_distance(baseline: statistics_pb2.Histogram, values: np.ndarray) -> float:
    """JS distance between the baseline histogram and `values` counted in the same buckets; values
    outside the baseline's range count in its first or last bucket."""
    edges = np.array([b.low_value for b in baseline.buckets] + [baseline.buckets[-1].high_value])
    expected = np.array([b.sample_count for b in baseline.buckets], dtype=np.float64)
    observed, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return float(jensenshannon(expected, observed, base=2))


def categorical_distance(baseline: statistics_pb2.StringStatistics, values: Counter[str]) -> float:
    """Largest difference in the share of any value (the baseline's top values, and all others together)."""
    total_base = baseline.common_stats.tot_num_values
    total_new = sum(values.values())
    top = {v.value: v.frequency / total_base for v in baseline.top_values}
    expected = {**top, OTHER: max(0.0, 1.0 - sum(top.values()))}
    observed = {value: values.get(value, 0) / total_new for value in top}
    observed[OTHER] = 1.0 - sum(observed.values())
    return float(max(abs(expected[key] - observed[key]) for key in expected))


def compare(baseline: statistics_pb2.DatasetFeatureStatistics, columns: dict[str, list[Any]], drift: DriftConfig,
            skip: set[str]) -> list[FeatureDrift]:
    """One FeatureDrift per feature of the baseline that is not in `skip` (the label)."""
    results = []
    for feature in baseline.features:
        name = feature.path.step[0] if feature.path.step else feature.name
        if name in skip:
            continue
        values = [v for v in columns.get(name, []) if v is not None]
        categorical = feature.HasField("string_stats")
        kind = "categorical" if categorical else "numeric"
        threshold = drift.features.get(name, drift.categorical if categorical else drift.numeric)
        note = ""
        if name not in columns:
            distance, note = None, "not in the span"
        elif not values:
            distance, note = None, "no values in the span"
        elif categorical:
            distance = categorical_distance(feature.string_stats, Counter(map(str, values)))
        elif not feature.num_stats.histograms or not feature.num_stats.histograms[0].buckets:
            distance, note = None, "the baseline has no histogram (trained before kiln recorded them)"
        else:
            distance = numeric_distance(feature.num_stats.histograms[0], np.asarray(values, dtype=np.float64))
        results.append(FeatureDrift(feature=name, kind=kind, distance=distance, threshold=threshold,
                                    drifted=distance is not None and distance > threshold, note=note))
    return results


def table(features: list[FeatureDrift]) -> str:
    """A Markdown table, drifted features first, then by distance."""
    rows = sorted(features, key=lambda f: (not f.drifted, -(f.distance or 0.0), f.feature))
    lines = ["| feature | kind | distance | threshold | drifted |", "|---|---|---:|---:|---|"]
    for f in rows:
        distance = "-" if f.distance is None else f"{f.distance:.4f}"
        verdict = "DRIFT" if f.drifted else ("-" if f.distance is None else "no")
        lines.append(f"| {f.feature} | {f.kind} | {distance} | {f.threshold:g} | {verdict}{' (' + f.note + ')' if f.note else ''} |")
    return "\n".join(lines)
