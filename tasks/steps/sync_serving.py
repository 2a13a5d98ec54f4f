"""Sync serving: bring a pipeline's served model to what its MLflow aliases say — the kiln_serving_sync DAG's task
for the pipeline, a registry step run on its config as it is at the time (no run snapshot), so a promotion or a
rollback made in the MLflow UI takes effect without a retrain. A pipeline with no registered model yet, or no
TF Serving configured, is skipped: there is nothing to serve, and nothing is unloaded.
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.context import NotConfiguredError, StepContext
from tasks.errors import StepSkipped
from tasks.model_registry import CHAMPION
from tasks.serving_sync import NotRegistered, RegistryServing
from tasks.step_config import ServingSections

log = logging.getLogger(__name__)


def run(ctx: StepContext, config: ServingSections) -> dict[str, Any]:
    del config  # the served model's name and addresses are the context's
    try:
        result = RegistryServing.of_run(ctx).sync()
    except (NotRegistered, NotConfiguredError) as exc:
        raise StepSkipped(str(exc)) from None
    return {"aliases": result.aliases, "labels": result.after.labels, "versions": list(result.after.versions),
            "changed": result.changed, "materialized": result.materialized,
            "champion_version": result.aliases.get(CHAMPION)}
