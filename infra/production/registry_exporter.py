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
            up.add_metric([], 1.0)
        except Exception as error:  # noqa: BLE001 - a scrape reports the registry down, it never fails
            log.warning("reading the MLflow registry failed: %s", error)
            up.add_metric([], 0.0)
        yield from (metric, blessed, alias, up)


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
