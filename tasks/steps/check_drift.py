"""Check drift: the drift monitor's one job (kiln_monitor_<pipeline>'s `check_drift` task, a registry step run
on the pipeline's config as it is at the time): the newest span against the training statistics of the version
that is champion now, feature by feature.

The baseline is found through MLflow alone: the `champion` alias -> its version's `kiln.train_statistics` tag
(register records the ExampleStatistics it was trained on) -> that artifact's train split. The report is a
DriftReport artifact, a table in the task log, and an MLflow run of its own in the pipeline's experiment
(`kiln.role=monitor`) with one `drift_<feature>` metric per feature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tasks import tracking, traffic
from tasks.artifacts.base import Output
from tasks.artifacts.drift import REPORT_MD, DriftProperties, TrafficDrift
from tasks.artifacts.statistics import ExampleStatistics
from tasks.context import StepContext
from tasks.data import values
from tasks.data.partitions import batches, plan
from tasks.data.profile import profile_source
from tasks.drift import compare, observe, table
from tasks.features import Preprocessing
from tasks.model_registry import CHAMPION, TRAIN_STATISTICS_TAG, aliases, version_contract
from tasks.schema import column_types
from tasks.step_config import MonitorSections

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

def run(ctx: StepContext, config: MonitorSections, *, drift: Output[DriftProperties]) -> dict[str, Any]:
    """Write the DriftReport; return what the next task decides on (drifted, its features, the span, the champion)."""
    mlflow_client = tracking.client(ctx)
    champion_version = aliases(mlflow_client, ctx.registered_model_name).get(CHAMPION)
    found: dict[str, Any] = {"baseline": "", "champion_version": None}
    commit_traffic = None
    if champion_version is None:
        found["note"] = f"no champion of {ctx.registered_model_name} yet: nothing to compare the span with"
    else:
        champion = mlflow_client.get_model_version(ctx.registered_model_name, str(champion_version))
        stats_uri = champion.tags.get(TRAIN_STATISTICS_TAG)
        if not stats_uri:
            found |= {"champion_version": int(champion.version),
                      "note": f"champion v{champion.version} has no {TRAIN_STATISTICS_TAG} tag (registered before kiln "
                              f"recorded it): nothing to compare the span with"}
        else:
            baseline = ExampleStatistics.read(stats_uri).statistics("train").datasets[0]
            found = {"baseline": f"champion v{champion.version}: train split of {stats_uri}",
                     "champion_version": int(champion.version)}
            if config.data.span is not None:  # the newest span; a pipeline without spans is watched by its traffic
                found["features"] = compare(baseline, observe(baseline, _span_batches(config)), config.monitor.drift,
                                            skip={config.data.label_column})
            if ctx.request_log is not None:
                found["traffic"], commit_traffic = _traffic(ctx, config, mlflow_client, int(champion.version),
                                                            baseline)
            found["drifted"] = (any(f.drifted for f in found.get("features", []))
                                or bool(found.get("traffic") and found["traffic"].drifted))
    report = DriftProperties(pipeline=ctx.pipeline, source=config.data.source, span=config.data.span, **found)
    text = _text(report)
    (drift.dir / REPORT_MD).write_text(text)
    drift.properties = report
    log.info("drift check of %s:\n%s", config.data.source, text)
    _track(mlflow_client, ctx, report, text)
    if commit_traffic is not None:  # last: a retry of a check that failed reads the same window again
        commit_traffic()
    return {"drifted": report.drifted, "drifted_features": report.drifted_features, "span": report.span,
            "champion_version": report.champion_version,
            "served_requests": report.traffic.requests if report.traffic else None}


def _traffic(ctx: StepContext, config: MonitorSections, mlflow_client: MlflowClient, version: int,
             baseline: Any) -> tuple[TrafficDrift, Callable[[], None] | None]:
    """The champion's request logs published since the last check: skew and window drift, and the function that
    records the window as read (None: nothing to record)."""
    assert ctx.request_log is not None
    text = version_contract(mlflow_client, ctx.registered_model_name, version)
    if text is None:
        return TrafficDrift(version=version, note="no contract: the logged requests cannot be read as columns"), None
    folder = traffic.log_folder(ctx.request_log.path, ctx.served_model_name, version)
    state = traffic.state_uri(ctx.artifact_root, ctx.pipeline, version)
    seen, previous = traffic.load_state(state)
    window = traffic.read_window(traffic.new_files(folder, seen), Preprocessing.model_validate_json(text), baseline)
    minimum = config.monitor.min_requests
    if window.requests < minimum:  # too few to measure: the files wait for the next check
        return TrafficDrift(version=version, requests=window.requests, files=len(window.files),
                            note=f"{window.requests} requests logged in {folder} since the last check; "
                                 f"{minimum} are measured (monitor.min_requests)"), None
    label = config.data.label_column
    result = TrafficDrift(
        version=version, requests=window.requests, files=len(window.files),
        skew=traffic.skew(baseline, window, config.monitor.drift, label),
        drift=traffic.window_drift(baseline, previous, window.observed, config.monitor.drift, label) if previous else [],
        note="" if previous else "the first window measured: its drift is compared from the next one on")
    return result, lambda: traffic.save_state(state, seen, window)


def _span_batches(config: MonitorSections) -> Iterator[dict[str, Any]]:
    """The span's columns batch by batch, typed as ingest types them (two streamed passes)."""
    source = config.data.source
    shape = config.data.image_shape
    types = column_types(profile_source(source, config.data.format, step="check_drift (types)", image_shape=shape),
                         config.data.schema_path)
    for partition in plan(source, config.data.format, partitions=1, image_shape=shape):
        for batch in batches(partition, "check_drift (counts)"):
            yield {name: values.typed(array, types[name], f"{partition.where} column {name!r}", batch.first_row)
                   for name, array in batch.columns.items()}


def _text(report: DriftProperties) -> str:
    head = f"# Drift of {report.source}" + (f" (span {report.span})" if report.span is not None else "")
    if not report.features and report.traffic is None:
        return f"{head}\n\n{report.note}\n"
    verdict = (f"**drift** in {', '.join(report.drifted_features)}" if report.drifted else "no drift")
    text = f"{head}\n\nagainst {report.baseline}: {verdict}\n"
    if report.features:
        text += f"\n{table(report.features)}\n"
    served = report.traffic
    if served is not None:
        text += (f"\n## Served traffic of v{served.version}: {served.requests} requests in {served.files} log files"
                 f"{' (' + served.note + ')' if served.note else ''}\n")
        for title, features in (("Skew against the training data", served.skew),
                                ("Drift against the previous window", served.drift)):
            if features:
                text += f"\n### {title}\n\n{table(features)}\n"
    return text


def _track(mlflow_client: MlflowClient, ctx: StepContext, report: DriftProperties, text: str) -> None:
    experiment = tracking.experiment_id(mlflow_client, ctx.experiment)
    run = mlflow_client.create_run(experiment, run_name=f"monitor {ctx.pipeline} {ctx.run_id}", tags={
        tracking.RUN_ID_TAG: ctx.run_id, tracking.PIPELINE_TAG: ctx.pipeline, tracking.ROLE_TAG: "monitor",
        "kiln.drifted": str(report.drifted).lower(), "kiln.data_source": report.source,
        **({"kiln.data_span": str(report.span)} if report.span is not None else {})})
    run_id = run.info.run_id
    served = report.traffic
    measured = [("drift", report.features)] + ([("skew", served.skew), ("traffic_drift", served.drift)] if served else [])
    for prefix, features in measured:
        for feature in features:
            if feature.distance is not None:
                mlflow_client.log_metric(run_id, f"{prefix}_{_metric_name(feature.feature)}", feature.distance)
    if served is not None:
        mlflow_client.log_metric(run_id, "served_requests", served.requests)
    mlflow_client.log_text(run_id, text, "drift/report.md")
    mlflow_client.log_text(run_id, report.model_dump_json(indent=1), "drift/report.json")
    mlflow_client.set_terminated(run_id)


def _metric_name(feature: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in feature)
