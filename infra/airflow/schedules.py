"""When a pipeline DAG runs by itself (`schedule:` in its YAML) and the Airflow Assets that carry it:
each pipeline's input is an Asset (`kiln_<pipeline>_data`, the data folder's URI) that `kiln data add`,
an upstream DAG or any REST client updates with an event; its drift is an Asset
(`kiln_<pipeline>_drift`) that kiln_monitor_<pipeline> updates only when a threshold is crossed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from tasks.config import ON_DRIFT, ON_NEW_DATA, PipelineConfig
from tasks.spans import is_spanned


def data_uri(config: PipelineConfig) -> str:
    """The input's URI: the folder of a spanned source (every span is an event on it), else the file.
    ${VARS} are expanded here, at parse time, from the dag-processor's environment (the stack's)."""
    source = os.path.expandvars(config.data.source)
    if "://" in source:
        return source.rsplit("/", 1)[0] if is_spanned(source) else source
    path = Path(source)
    return (path.parent if is_spanned(source) else path).resolve().as_uri()


def data_asset(config: PipelineConfig) -> Asset:
    return Asset(name=f"kiln_{config.pipeline}_data", uri=data_uri(config), group="kiln-data")


def drift_asset(config: PipelineConfig) -> Asset:
    return Asset(name=f"kiln_{config.pipeline}_drift", uri=f"kiln-drift://{config.pipeline}", group="kiln-drift")


def pipeline_schedule(config: PipelineConfig) -> Any:
    """What `DAG(schedule=...)` gets: None, the cron expression or preset, or the asset to wait for."""
    if config.schedule == ON_NEW_DATA:
        return [data_asset(config)]
    if config.schedule == ON_DRIFT:
        return [drift_asset(config)]
    return config.schedule


def batch_asset(config: PipelineConfig) -> Asset:
    """The batch data's folder: each new span of `batch.data` is an event on it (kiln_batch_<pipeline> on_new_data)."""
    data = os.path.expandvars(config.batch.data if config.batch else "")
    uri = data.rsplit("/", 1)[0] if "://" in data else Path(data).parent.resolve().as_uri()
    return Asset(name=f"kiln_{config.pipeline}_batch_data", uri=uri, group="kiln-data")


def batch_schedule(config: PipelineConfig) -> Any:
    schedule = config.batch.schedule if config.batch else None
    return [batch_asset(config)] if schedule == ON_NEW_DATA else schedule
