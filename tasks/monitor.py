"""The drift monitor's one job (the `check_drift` task of kiln_monitor_<pipeline>): the newest span
against the training statistics of the version that is champion now, feature by feature.

The baseline is found through MLflow alone: the `champion` alias -> its version's `kiln.run_id` tag
-> that DAG run's ExampleStatistics (train split). The report is a DriftReport artifact, a table in
the task log, and an MLflow run of its own in the pipeline's experiment (`kiln.role=monitor`) with
one `drift_<feature>` metric per feature.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from tasks import drift, tracking
from tasks.artifacts.drift import REPORT_MD, DriftProperties, DriftReport
from tasks.artifacts.statistics import ExampleStatistics
from tasks.columns import CsvRows, parse_value, profile_csv
from tasks.config import PipelineConfig, load_config
from tasks.context import StepContext
from tasks.model_registry import CHAMPION, aliases
from tasks.snapshot import Deployment, with_span
from tasks.steps.ingest import column_types

log = logging.getLogger(__name__)

MONITOR_STEP = "monitor"


def check_drift(config_path: str, deployment: Deployment, run_id: str) -> dict[str, Any]:
    """Write the DriftReport; return {report: URI, drifted: bool, drifted_features, span} for the next task."""
    config = with_span(load_config(config_path))
    ctx = StepContext(artifact_root=deployment.artifact_root, pipeline=config.pipeline, run_id=run_id,
                      tracking_uri=deployment.tracking_uri_for(config))
    mlflow_client = tracking.client(ctx)
    champion_version = aliases(mlflow_client, config.registered_model_name).get(CHAMPION)
    champion = None if champion_version is None else \
        mlflow_client.get_model_version(config.registered_model_name, str(champion_version))
    found: dict[str, Any] = {"baseline": "", "champion_version": None}
    if champion is None:
        found["note"] = f"no champion of {config.registered_model_name} yet: nothing to compare the span with"
    else:
        baseline_run = champion.tags.get(tracking.RUN_ID_TAG, "")
        stats_uri = StepContext(artifact_root=deployment.artifact_root, pipeline=config.pipeline,
                                run_id=baseline_run).output_uri("validate", "statistics")
        baseline = ExampleStatistics.read(stats_uri).statistics("train").datasets[0]
        features = drift.compare(baseline, _columns(config), config.monitor.drift, skip={config.data.label_column})
        found = {"baseline": f"champion v{champion.version}: train split of {baseline_run} ({stats_uri})",
                 "champion_version": int(champion.version), "features": features,
                 "drifted": any(f.drifted for f in features)}
    report = DriftProperties(pipeline=config.pipeline, source=config.data.source, span=config.data.span, **found)
    uri = ctx.output_uri(MONITOR_STEP, "drift")
    text = _text(report)
    with DriftReport.publish(uri) as out:
        (out.dir / REPORT_MD).write_text(text)
        out.properties = report
    log.info("drift check of %s:\n%s", config.data.source, text)
    _track(mlflow_client, config, ctx, report, text)
    return {"report": uri, "drifted": report.drifted, "drifted_features": report.drifted_features,
            "span": report.span, "champion_version": report.champion_version}


def _columns(config: PipelineConfig) -> dict[str, list[Any]]:
    """The span's values per column, typed as ingest types them."""
    source = config.data.source
    types = column_types(profile_csv(source), config.data.schema_path)
    columns: dict[str, list[Any]] = defaultdict(list)
    with CsvRows(source) as rows:
        for _, fields in rows:
            for name, text in zip(rows.header, fields, strict=True):
                columns[name].append(parse_value(text, types[name]))
    return dict(columns)


def _text(report: DriftProperties) -> str:
    head = f"# Drift of {report.source}" + (f" (span {report.span})" if report.span is not None else "")
    if not report.features:
        return f"{head}\n\n{report.note}\n"
    verdict = (f"**drift** in {', '.join(report.drifted_features)}" if report.drifted else "no drift")
    return f"{head}\n\nagainst {report.baseline}: {verdict}\n\n{drift.table(report.features)}\n"


def _track(mlflow_client: Any, config: PipelineConfig, ctx: StepContext, report: DriftProperties, text: str) -> None:
    experiment = tracking.experiment_id(mlflow_client, config.registry.experiment)
    run = mlflow_client.create_run(experiment, run_name=f"monitor {config.pipeline} {ctx.run_id}", tags={
        tracking.RUN_ID_TAG: ctx.run_id, tracking.PIPELINE_TAG: config.pipeline, tracking.ROLE_TAG: "monitor",
        "kiln.drifted": str(report.drifted).lower(), "kiln.data_source": report.source,
        **({"kiln.data_span": str(report.span)} if report.span is not None else {})})
    run_id = run.info.run_id
    for feature in report.features:
        if feature.distance is not None:
            mlflow_client.log_metric(run_id, f"drift_{_metric_name(feature.feature)}", feature.distance)
    mlflow_client.log_text(run_id, text, "drift/report.md")
    mlflow_client.log_text(run_id, report.model_dump_json(indent=1), "drift/report.json")
    mlflow_client.set_terminated(run_id)


def _metric_name(feature: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in feature)
