"""`kiln_batch_<pipeline>`: for each pipeline with a `batch:` section, batch inference as a DAG (TFX's
BulkInferrer). Wiring only: `plan_batch` decides the job (tasks.batch.job: the version, blessed unless the trigger
gives a reason, the partitions), `score` is mapped over the job's shards at run time (dynamic task mapping; placed
like evaluate unless `batch.placement` says otherwise) and `commit` writes `_SUCCESS` once every shard has moved
its files in, or closes the job FAILED. The trigger form takes the data, output and version of one run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from infra.airflow.dag_factory import DEFAULT_ARGS, check_placement, placement_args
from infra.airflow.placement import batch_placement, executor_remap
from infra.airflow.schedules import batch_schedule
from tasks.config import BatchConfig, PipelineConfig
from tasks.errors import BadInputError, one_line

FORM = ("data", "output", "alias", "version", "overwrite")  # batch fields a trigger may change for its run


def batch_dags(pipelines: list[tuple[Path, PipelineConfig]]) -> dict[str, DAG]:
    """dag_id -> batch DAG of every loaded pipeline with a batch section; one that cannot be wired is left to
    pipeline_dags to report."""
    dags = {}
    for config_path, config in pipelines:
        try:
            dag = batch_dag(config, config_path)
        except (BadInputError, OSError):
            continue
        if dag is not None:
            dags[dag.dag_id] = dag
    return dags


def batch_dag(config: PipelineConfig, config_path: Path) -> DAG | None:
    if config.batch is None:
        return None
    check_placement(config)
    scoring = placement_args(batch_placement(config, executor_remap()))
    with DAG(
        dag_id=f"kiln_batch_{config.pipeline}",
        description=f"{config.pipeline}'s registered version scores {config.batch.data}",
        schedule=batch_schedule(config),
        catchup=False,
        max_active_runs=1,
        tags=["kiln", "batch"],
        default_args=DEFAULT_ARGS,
        params=_params(config.batch),
        doc_md=__doc__,
    ) as dag:

        @task
        def plan_batch() -> list[dict[str, Any]]:
            """One {job, shard} per shard: what `score` is mapped over (the job itself is a URI)."""
            from tasks.batch.job import Job, plan

            context = get_current_context()
            params = context["params"]
            config_now, ctx = _pipeline(config_path, context["run_id"], context["ti"].try_number)
            batch = _with_form(config_now.batch, config.batch, params)
            try:
                uri = plan(ctx, config_now, batch, params.get("allow_unblessed") or None)
            except BadInputError as exc:
                raise AirflowFailException(one_line(exc)) from None
            return [{"job": uri, "shard": shard} for shard in range(Job.read(uri).shards)]

        @task(**scoring)
        def score(job: str, shard: int) -> dict[str, Any]:
            from tasks.batch.scoring import score_shard

            try:
                return score_shard(job, shard)
            except BadInputError as exc:
                raise AirflowFailException(one_line(exc)) from None

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def commit() -> dict[str, Any]:
            from tasks.batch.commit import commit as commit_job

            shards = get_current_context()["ti"].xcom_pull(task_ids="plan_batch")
            if not shards:
                raise AirflowSkipException("no job was planned: nothing to commit")
            try:
                return commit_job(shards[0]["job"])
            except BadInputError as exc:
                raise AirflowFailException(one_line(exc)) from None

        score.expand_kwargs(plan_batch()) >> commit()
    return dag


def _pipeline(config_path: Path, run_id: str, try_number: int) -> tuple[PipelineConfig, Any]:
    """The pipeline's config as it is now, and a context on the deployment's MLflow and artifact root."""
    from infra.airflow.deployment import deployment_from_env
    from tasks.config import load_config
    from tasks.snapshot import pipeline_context

    deployment = deployment_from_env()
    try:
        config = load_config(config_path)
    except BadInputError as exc:
        raise AirflowFailException(one_line(exc)) from None
    if config.batch is None:
        raise AirflowFailException(f"{config_path}: the batch section is gone")
    ctx = pipeline_context(config, deployment.artifact_root, run_id, deployment.tracking_uri_for(config), None,
                           try_number, step="batch")
    return config, ctx


def _with_form(batch: BatchConfig, parsed: BatchConfig, params: dict[str, Any]) -> BatchConfig:
    """The batch section as it is now with the trigger's changes: a form value equal to the YAML's as the DAG was
    parsed (${VARS} unexpanded) is no change, so the run keeps the section's expanded value."""
    values = batch.model_dump()
    for name in FORM:
        given = params.get(name)
        if given in (None, "") and name != "version":
            continue
        if given == getattr(parsed, name):
            continue
        values[name] = os.path.expandvars(given) if isinstance(given, str) else given
    try:
        return BatchConfig.model_validate(values)
    except ValueError as exc:
        raise AirflowFailException(f"trigger params: {str(exc).splitlines()[-1].strip()}") from None


def _params(batch: BatchConfig) -> dict[str, Param]:
    fields = BatchConfig.model_fields

    def described(name: str) -> str:
        return f"{fields[name].description} (config field batch.{name})"

    return {
        "data": Param(batch.data, type="string", title="Data", description=described("data")),
        "output": Param(batch.output, type="string", title="Output", description=described("output")),
        "alias": Param(batch.alias, type="string", title="Alias", description=described("alias")),
        "version": Param(batch.version, type=["integer", "null"], minimum=1, title="Version",
                         description=described("version")),
        "overwrite": Param(batch.overwrite, type="boolean", title="Overwrite", description=described("overwrite")),
        "allow_unblessed": Param(None, type=["string", "null"], title="Allow unblessed",
                                 description="score with a version that is not blessed, for this reason (recorded "
                                             "on the job's MLflow run)"),
    }
