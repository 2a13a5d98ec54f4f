"""Tune: one of `tune.parallelism` task instances (Airflow dynamic task mapping) drawing trials from the pipeline's
shared study until it holds `tune.trials`; train then takes the best trial's values (tasks.tuning)."""

from __future__ import annotations

from typing import Any

from tasks import tuning
from tasks.artifacts.examples import Examples
from tasks.artifacts.transform import TransformGraph
from tasks.context import StepContext
from tasks.step_config import TuneSections


def run(ctx: StepContext, config: TuneSections, *, examples: Examples, transform: TransformGraph,
        instance: int = 0) -> dict[str, Any]:
    if config.tune is None:  # the DAG maps no instance then; a direct call has nothing to do
        return {"trials_run": 0}
    ran = tuning.run_trials(ctx, config.tune, config.train, examples, transform, instance)
    return {"trials_run": ran}
