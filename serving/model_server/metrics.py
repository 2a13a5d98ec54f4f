"""TF Serving's monitoring metrics and their Prometheus text page.

prometheus-client cannot print TF Serving's format (it appends `_total` to counters and always writes `# HELP`),
so this is a small exporter that mirrors `util/prometheus_exporter.cc`: `# TYPE` lines only, metric names are
the TensorFlow monitoring names with every character outside `[a-zA-Z0-9_]` turned into `:`.
"""

from __future__ import annotations

import bisect
import re
import threading


def prometheus_name(monitoring_name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", ":", monitoring_name)


def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    return [scale * growth**i for i in range(count)]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels_text(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, label_names: tuple[str, ...]):
        self.name, self.label_names = prometheus_name(name), label_names
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + amount

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(self.label_names, k)} {_number(v)}" for k, v in items]


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, label_names: tuple[str, ...], buckets: list[float]):
        self.name, self.label_names, self.bounds = prometheus_name(name), label_names, buckets
        self._cells: dict[tuple[str, ...], list] = {}
        self._lock = threading.Lock()

    def observe(self, *label_values: str, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            cell = self._cells.get(label_values)
            if cell is None:
                cell = self._cells[label_values] = [[0] * (len(self.bounds) + 1), 0.0, 0]
            cell[0][index] += 1
            cell[1] += value
            cell[2] += 1

    def count(self, *label_values: str) -> int:
        with self._lock:
            cell = self._cells.get(label_values)
            return cell[2] if cell else 0

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, ([*c[0]], c[1], c[2])) for k, c in self._cells.items())
        lines = []
        for labels, (counts, total, count) in items:
            cumulative = 0
            for bound, bucket_count in zip([*self.bounds, None], counts, strict=True):
                cumulative += bucket_count
                le = 'le="+Inf"' if bound is None else f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels_text(self.label_names, labels, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels_text(self.label_names, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels_text(self.label_names, labels)} {count}")
        return lines


LATENCY_BUCKETS_US = exponential_buckets(10, 1.8, 33)
BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 14)


class ServerMetrics:
    """Every metric the server records, named as TF Serving names them."""

    def __init__(self) -> None:
        self.request_count = Counter("/tensorflow/serving/request_count", ("model_name", "status"))
        self.request_latency = Histogram(
            "/tensorflow/serving/request_latency", ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US
        )
        self.runtime_latency = Histogram(
            "/tensorflow/serving/runtime_latency", ("model_name", "API", "runtime"), LATENCY_BUCKETS_US
        )
        self.request_example_counts = Histogram(
            "/tensorflow/serving/request_example_counts", ("model",), exponential_buckets(1, 2, 18)
        )
        self.request_example_count_total = Counter(
            "/tensorflow/serving/request_example_count_total", ("model",)
        )
        self.model_warmup_latency = Histogram(
            "/tensorflow/serving/model_warmup_latency", ("model_path", "status"), LATENCY_BUCKETS_US
        )
        self.model_warmup_records_read = Counter(
            "/tensorflow/serving/model_warmup_records_read", ("model_path", "status")
        )
        self.load_attempt_count = Counter(
            "/tensorflow/cc/saved_model/load_attempt_count", ("model_path", "status")
        )
        self.load_latency = Counter("/tensorflow/cc/saved_model/load_latency", ("model_path",))
        self.batch_queuing_latency = Histogram(
            "/tensorflow/serving/batching_session/queuing_latency", ("thread_pool_name",), LATENCY_BUCKETS_US
        )
        self.input_batch_size = Histogram(
            "/tensorflow/serving/batching_session/input_batch_size", ("thread_pool_name",), BATCH_SIZE_BUCKETS
        )
        self.processed_batch_size = Histogram(
            "/tensorflow/serving/batching_session/processed_batch_size",
            ("thread_pool_name",),
            BATCH_SIZE_BUCKETS,
        )
        # kiln-model-server writes request logs (TF Serving's open-source build cannot); status is logged,
        # dropped (the queue was full) or failed (the file could not be written).
        self.request_log_count = Counter("/tensorflow/serving/request_log_count", ("model_name", "status"))
        self._all = [value for value in vars(self).values() if isinstance(value, Counter | Histogram)]

    def prometheus_text(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
