"""kiln's registry exporter: the MLflow model registry as Prometheus metrics, for the dashboard's
"model metric over versions" and "which version is champion" panels.

    python -m infra.production.registry_exporter --port 9105      # MLFLOW_TRACKING_URI from the environment

TF Serving's own metrics carry the served model's name, not its version; what each version measured at
evaluation, and which version each alias pointed at over time, come from here. Read on every scrape
(the registry is small; `--max-versions` bounds the newest versions read per model).

Metrics (gauges):
  kiln_model_version_metric{model,version,metric}  a metric the version's register run logged
                                                   (eval_<metric> and tflite_<metric>)
  kiln_model_version_blessed{model,version}        1 when the version was blessed at evaluation
  kiln_model_alias_version{model,alias}            the version an alias (champion, challenger, ...) names
  kiln_registry_up                                 1 when the last read of the registry succeeded
  kiln_monitor_distance{pipeline,check,feature}    the newest drift check of each pipeline: per feature, the
                                                   span's drift (check=span), the served traffic's skew
                                                   (check=skew) and its drift from the previous window
                                                   (check=traffic_drift), as kiln_monitor_<pipeline> logged them
  kiln_monitor_drifted{pipeline}                   1 when that check found drift
  kiln_monitor_served_requests{pipeline}           the served requests that check measured
  kiln_monitor_check_timestamp_seconds{pipeline}   when it ran
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

METRIC_PREFIXES = ("eval_", "tflite_")  # what tasks/steps/register.py logs on the version's run
METRIC_NAMES = ("kiln_model_version_metric", "kiln_model_version_blessed", "kiln_model_alias_version",
                "kiln_registry_up")
# The monitor run's metric prefixes (tasks/steps/check_drift.py), longest first: traffic_drift_ before drift_.
CHECKS = (("traffic_drift_", "traffic_drift"), ("skew_", "skew"), ("drift_", "span"))
MONITOR_RUNS = 500  # the newest monitor runs read per scrape; each pipeline's newest among them is exported


class RegistryCollector(Collector):
    def __init__(self, client: Any, max_versions: int = 50):
        self.client, self.max_versions = client, max_versions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        metric = GaugeMetricFamily(METRIC_NAMES[0], "A metric the model version's register run logged",
                                   labels=["model", "version", "metric"])
        blessed = GaugeMetricFamily(METRIC_NAMES[1], "1 if the model version was blessed at evaluation",
                                    labels=["model", "version"])
        alias = GaugeMetricFamily(METRIC_NAMES[2], "The model version an alias names", labels=["model", "alias"])
        up = GaugeMetricFamily(METRIC_NAMES[3], "1 if the last read of the MLflow registry succeeded")
        try:
            for model in self.client.search_registered_models():
                for name, version in model.aliases.items():
                    alias.add_metric([model.name, name], float(version))
                versions = self.client.search_model_versions(f"name = '{model.name}'",
                                                             max_results=self.max_versions,
                                                             order_by=["version_number DESC"])
                for version in versions:
                    labels = [model.name, str(version.version)]
                    if "blessed" in version.tags:
                        blessed.add_metric(labels, 1.0 if version.tags["blessed"] == "true" else 0.0)
                    if not version.run_id:
                        continue
                    for key, value in sorted(self.client.get_run(version.run_id).data.metrics.items()):
                        if key.startswith(METRIC_PREFIXES):
                            metric.add_metric([*labels, key], float(value))
            monitor = list(self._monitor())
            up.add_metric([], 1.0)
        except Exception as error:  # noqa: BLE001 - a scrape reports the registry down, it never fails
            log.warning("reading the MLflow registry failed: %s", error)
            up.add_metric([], 0.0)
            monitor = []
        yield from (metric, blessed, alias, up, *monitor)

    def _monitor(self) -> Iterator[GaugeMetricFamily]:
        """The newest kiln_monitor_<pipeline> check of each pipeline (its MLflow run, kiln.role=monitor)."""
        distance = GaugeMetricFamily("kiln_monitor_distance", "A feature's distance in the newest drift check",
                                     labels=["pipeline", "check", "feature"])
        drifted = GaugeMetricFamily("kiln_monitor_drifted", "1 if the newest drift check found drift",
                                    labels=["pipeline"])
        requests = GaugeMetricFamily("kiln_monitor_served_requests", "Served requests the newest check measured",
                                     labels=["pipeline"])
        checked = GaugeMetricFamily("kiln_monitor_check_timestamp_seconds", "When the newest drift check ran",
                                    labels=["pipeline"])
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(experiments, filter_string="tags.`kiln.role` = 'monitor'",
                                       order_by=["attributes.start_time DESC"],
                                       max_results=MONITOR_RUNS) if experiments else []
        seen: set[str] = set()
        for run in runs:
            pipeline = run.data.tags.get("kiln.pipeline", "")
            if pipeline in seen:
                continue
            seen.add(pipeline)
            drifted.add_metric([pipeline], 1.0 if run.data.tags.get("kiln.drifted") == "true" else 0.0)
            checked.add_metric([pipeline], run.info.start_time / 1000)
            for key, value in sorted(run.data.metrics.items()):
                if key == "served_requests":
                    requests.add_metric([pipeline], float(value))
                    continue
                check = next(((name, key[len(prefix):]) for prefix, name in CHECKS if key.startswith(prefix)), None)
                if check is not None:
                    distance.add_metric([pipeline, *check], float(value))
        yield from (distance, drifted, requests, checked)


def main(argv: list[str] | None = None) -> None:
    from mlflow import MlflowClient
    from prometheus_client import REGISTRY, start_http_server

    parser = argparse.ArgumentParser(prog="python -m infra.production.registry_exporter")
    parser.add_argument("--port", type=int, default=9105)
    parser.add_argument("--address", default="0.0.0.0", help="bind address (inside the stack's network)")
    parser.add_argument("--max-versions", type=int, default=50)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    REGISTRY.register(RegistryCollector(MlflowClient(), args.max_versions))
    start_http_server(args.port, addr=args.address)
    log.info("kiln registry exporter on %s:%d/metrics", args.address, args.port)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
