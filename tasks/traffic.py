"""Served traffic as the drift monitor reads it: the request logs kiln-model-server writes for a model version
(`<serving.request_log.path>/<model>/<version>/*.tfrecord`, PredictionLog records, published whole), turned back
into the stored columns the champion was trained on, and compared two ways with the span drift's distances:

* skew: the traffic's distribution against the champion's training statistics (TFDV's training/serving skew);
* drift: the traffic of this window (the files published since the monitor's last run) against the previous
  window's, counted in the same baseline buckets and top values.

The monitor keeps, per model version, the names of the files it has read and the previous window's counts in
`{artifact_root}/{pipeline}/.monitor/traffic-v<version>.json`, so each file is read once.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
from scipy.spatial.distance import jensenshannon
from tensorflow_metadata.proto.v0 import statistics_pb2

from common import storage
from tasks.artifacts.drift import FeatureDrift
from tasks.config import DriftConfig
from tasks.drift import OTHER, Observed, compare, features_of, observe
from tasks.features import MISSING_INT, FeatureSpec, Preprocessing

log = logging.getLogger(__name__)
LOG_SUFFIX = ".tfrecord"


@dataclass
class TrafficWindow:
    files: list[str]  # the log files read in this window
    requests: int
    rows: int
    observed: dict[str, Observed]


def log_folder(request_log_path: str, served_model: str, version: int) -> str:
    from urllib.parse import quote

    name = quote(served_model, safe="-_.=+@,")  # the server's folder name for the model (request_log_files)
    return f"{request_log_path.rstrip('/')}/{'%2E' + name[1:] if name.startswith('.') else name}/{version}"


def new_files(folder: str, seen: set[str]) -> list[str]:
    """The folder's published log files not read yet, oldest first (names start with the time they were opened)."""
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.isdir(path):
        return []
    fs.invalidate_cache(path)
    names = sorted(entry.rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))
    return [f"{folder}/{name}" for name in names if name.endswith(LOG_SUFFIX) and not name.startswith(".")
            and name not in seen]


def request_columns(files: list[str], contract: Preprocessing) -> Iterator[dict[str, pa.Array]]:
    """The stored columns of each logged Predict request; a request without the model's inputs (another signature,
    a Classify or Regress call) is skipped."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    for file in files:
        for record in tf.data.TFRecordDataset(storage.local_files([file])[0]):
            logged = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if not logged.HasField("predict_log"):
                continue
            inputs = logged.predict_log.request.inputs
            if any(feature.name not in inputs for feature in contract.features):
                continue
            yield _columns({name: tf.make_ndarray(inputs[name]) for name in inputs}, contract.features)


def _columns(inputs: dict[str, np.ndarray], features: list[FeatureSpec]) -> dict[str, pa.Array]:
    columns: dict[str, pa.Array] = {}
    for feature in features:
        values = inputs[feature.name]
        if feature.kind == "image":
            continue
        if feature.kind == "vector":
            matrix = values.reshape(len(values), -1)
            for index, column in enumerate(feature.columns):
                columns[column] = pa.array(matrix[:, index].astype(np.float64))
        elif feature.kind == "string":  # "" is how a client sends a missing string (tasks.features)
            text = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]
            columns[feature.columns[0]] = pa.array([t or None for t in text], pa.string())
        else:  # the integer marker of a missing value back to a missing value (NaN is one already)
            flat = values.reshape(-1)
            missing = flat == MISSING_INT if flat.dtype == np.int64 else None
            columns[feature.columns[0]] = pa.array(flat.astype(np.float64), mask=missing)
    return columns


def read_window(files: list[str], contract: Preprocessing,
                baseline: statistics_pb2.DatasetFeatureStatistics) -> TrafficWindow:
    requests = rows = 0

    def counted() -> Iterator[dict[str, pa.Array]]:
        nonlocal requests, rows
        for columns in request_columns(files, contract):
            requests += 1
            rows += len(next(iter(columns.values()))) if columns else 0
            yield columns

    observed = observe(baseline, counted())
    return TrafficWindow(files=files, requests=requests, rows=rows, observed=observed)


def skew(baseline: statistics_pb2.DatasetFeatureStatistics, window: TrafficWindow, drift: DriftConfig,
         label: str) -> list[FeatureDrift]:
    return compare(baseline, window.observed, drift, skip={label})


def window_drift(baseline: statistics_pb2.DatasetFeatureStatistics, previous: dict[str, Observed],
                 current: dict[str, Observed], drift: DriftConfig, label: str) -> list[FeatureDrift]:
    """This window against the previous one, feature by feature, in the baseline's buckets and top values."""
    results = []
    for name, feature in features_of(baseline).items():
        if name == label or feature.HasField("bytes_stats"):
            continue
        categorical = feature.HasField("string_stats")
        threshold = drift.features.get(name, drift.categorical if categorical else drift.numeric)
        before, now = previous.get(name), current.get(name)
        distance, note = None, ""
        if before is None or now is None or not before.count or not now.count:
            note = "no values in one of the two windows"
        elif categorical:
            distance = _frequency_distance(before, now)
        elif before.buckets is None or now.buckets is None:
            note = "the baseline has no histogram"
        else:
            distance = float(jensenshannon(before.buckets, now.buckets, base=2))
        results.append(FeatureDrift(feature=name, kind="categorical" if categorical else "numeric", distance=distance,
                                    threshold=threshold, drifted=distance is not None and distance > threshold,
                                    note=note))
    return results


def _frequency_distance(before: Observed, now: Observed) -> float:
    keys = set(before.top) | set(now.top)

    def shares(seen: Observed) -> dict[str, float]:
        found = {key: seen.top.get(key, 0) / seen.count for key in keys}
        return {**found, OTHER: 1.0 - sum(found.values())}

    a, b = shares(before), shares(now)
    return float(max(abs(a[key] - b[key]) for key in a))


def state_uri(artifact_root: str, pipeline: str, version: int) -> str:
    return f"{artifact_root.rstrip('/')}/{pipeline}/.monitor/traffic-v{version}.json"


def load_state(uri: str) -> tuple[set[str], dict[str, Observed]]:
    if not storage.exists(uri):
        return set(), {}
    state = json.loads(storage.read_text(uri))
    window = {name: Observed(count=item["count"], top=Counter(item["top"]),
                             buckets=None if item["buckets"] is None else np.array(item["buckets"], np.float64))
              for name, item in state["window"].items()}
    return set(state["files"]), window


def save_state(uri: str, seen: set[str], window: TrafficWindow) -> None:
    observed: dict[str, Any] = {name: {"count": o.count, "top": dict(o.top),
                                       "buckets": None if o.buckets is None else o.buckets.tolist()}
                                for name, o in window.observed.items()}
    names = seen | {file.rsplit("/", 1)[-1] for file in window.files}
    storage.write_text(uri, json.dumps({"files": sorted(names), "window": observed}))
