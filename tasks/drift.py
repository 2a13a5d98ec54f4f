"""Drift of a span against the statistics of the data the champion was trained on, measured as TFDV
measures it: the Jensen-Shannon distance (base 2, 0..1) for numeric features, over the buckets of
the baseline's histogram; the L-infinity distance of the value frequencies for categorical ones,
over the baseline's top values plus one bucket for all other values.

The span is read batch by batch and only counted into the baseline's buckets and top values
(`observe`), so the monitor's memory does not grow with the span."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.spatial.distance import jensenshannon
from tensorflow_metadata.proto.v0 import statistics_pb2

from tasks.artifacts.drift import FeatureDrift
from tasks.config import DriftConfig

OTHER = "\x00other"  # the bucket of values outside the baseline's top values


def _edges(baseline: statistics_pb2.Histogram) -> np.ndarray:
    return np.array([b.low_value for b in baseline.buckets] + [baseline.buckets[-1].high_value])


def bucket_counts(baseline: statistics_pb2.Histogram, values: np.ndarray) -> np.ndarray:
    """`values` counted in the baseline's buckets; values outside its range count in the first or last."""
    edges = _edges(baseline)
    observed, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return observed.astype(np.float64)


def histogram_distance(baseline: statistics_pb2.Histogram, observed: np.ndarray) -> float:
    """JS distance between the baseline histogram and counts in the same buckets."""
    expected = np.array([b.sample_count for b in baseline.buckets], dtype=np.float64)
    return float(jensenshannon(expected, observed, base=2))


def numeric_distance(baseline: statistics_pb2.Histogram, values: np.ndarray) -> float:
    return histogram_distance(baseline, bucket_counts(baseline, values))


def categorical_distance(baseline: statistics_pb2.StringStatistics, values: Counter[str], total: int | None = None) -> float:
    """Largest difference in the share of any value (the baseline's top values, and all others together);
    `values` needs only the baseline's top values when `total` counts every value."""
    total_base = baseline.common_stats.tot_num_values
    total_new = sum(values.values()) if total is None else total
    top = {v.value: v.frequency / total_base for v in baseline.top_values}
    expected = {**top, OTHER: max(0.0, 1.0 - sum(top.values()))}
    observed = {value: values.get(value, 0) / total_new for value in top}
    observed[OTHER] = 1.0 - sum(observed.values())
    return float(max(abs(expected[key] - observed[key]) for key in expected))


@dataclass
class Observed:
    """What the span holds of one feature, counted as the baseline is: numbers in its histogram's buckets,
    categories among its top values (with the total of all values)."""

    count: int = 0
    buckets: np.ndarray | None = None
    top: Counter[str] = field(default_factory=Counter)


def features_of(baseline: statistics_pb2.DatasetFeatureStatistics) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    return {(f.path.step[0] if f.path.step else f.name): f for f in baseline.features}


def observe(baseline: statistics_pb2.DatasetFeatureStatistics, batches: Iterable[dict[str, pa.Array]]) -> dict[str, Observed]:
    """Count a span's typed columns (null = missing) batch by batch against the baseline."""
    features = features_of(baseline)
    observed: dict[str, Observed] = {}
    for batch in batches:
        for name, array in batch.items():
            feature = features.get(name)
            if feature is None:
                continue
            seen = observed.setdefault(name, Observed())
            present = array.drop_null()
            if pa.types.is_floating(present.type):
                present = pc.filter(present, pc.invert(pc.is_nan(present)))
            seen.count += len(present)
            if feature.HasField("string_stats"):
                wanted = pa.array([v.value for v in feature.string_stats.top_values], pa.string())
                text = pc.cast(present, pa.string())
                counts = pc.value_counts(pc.filter(text, pc.is_in(text, value_set=wanted)))
                for item in counts.to_pylist():
                    seen.top[item["values"]] += item["counts"]
            elif feature.num_stats.histograms and feature.num_stats.histograms[0].buckets:
                numbers = pc.cast(present, pa.float64()).to_numpy(zero_copy_only=False)
                counts = bucket_counts(feature.num_stats.histograms[0], numbers)
                seen.buckets = counts if seen.buckets is None else seen.buckets + counts
    return observed


def observe_values(baseline: statistics_pb2.DatasetFeatureStatistics, columns: dict[str, list[Any]]) -> dict[str, Observed]:
    """`observe` of values in lists (None = missing)."""
    return observe(baseline, [{name: pa.array(values) for name, values in columns.items()}])


def compare(baseline: statistics_pb2.DatasetFeatureStatistics, columns: dict[str, Observed], drift: DriftConfig,
            skip: set[str]) -> list[FeatureDrift]:
    """One FeatureDrift per feature of the baseline that is not in `skip` (the label)."""
    results = []
    for name, feature in features_of(baseline).items():
        if name in skip:
            continue
        seen = columns.get(name)
        categorical = feature.HasField("string_stats")
        kind = "categorical" if categorical else "image" if feature.HasField("bytes_stats") else "numeric"
        threshold = drift.features.get(name, drift.categorical if categorical else drift.numeric)
        note = ""
        if kind == "image":
            distance, note = None, "an image: its pixels are not compared"
        elif seen is None:
            distance, note = None, "not in the span"
        elif not seen.count:
            distance, note = None, "no values in the span"
        elif categorical:
            distance = categorical_distance(feature.string_stats, seen.top, total=seen.count)
        elif seen.buckets is None:
            distance, note = None, "the baseline has no histogram (trained before kiln recorded them)"
        else:
            distance = histogram_distance(feature.num_stats.histograms[0], seen.buckets)
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
