"""Airflow DAGs from pipeline YAMLs and the step registry: one DAG `kiln_<pipeline>` per YAML.

Wiring only. The task list, each task's inputs (matched by artifact name to the step that produces
them), its params (the trigger form: JSON schemas derived from the config's pydantic fields, prefilled
with the YAML's values) and its placement (executor, queue, pool, pod override from the YAML's
`placement` over its profile, `infra.airflow.placement`) all come from `tasks.registry` and the YAML.
The first task resolves the run snapshot (the only code that reads the deployment's environment);
every other task calls `tasks.step_runner.run_step`, which imports the step only when it runs, so
parsing stays fast. A step of role `approval` is a Human-in-the-loop task (`infra.airflow.approval`). Only DAG
files import this module.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from infra.airflow.approval import PipelineApproval
from infra.airflow.links import XCOM_KEY as LINKS_XCOM
from infra.airflow.links import links_for
from infra.airflow.pipelines import CONFIG_MARK, config_fingerprint
from infra.airflow.placement import executor_remap, placements, pod_override, step_placement
from infra.airflow.schedules import pipeline_schedule
from tasks.config import PipelineConfig, StepPlacement
from tasks.errors import BadInputError, one_line
from tasks.registry import PARAMS, STEPS, StepSpec, param_defaults, param_schema

log = logging.getLogger(__name__)

DEFAULT_ARGS = {"owner": "kiln", "retries": 1, "retry_delay": timedelta(seconds=5)}
SETUP = next(spec for spec in STEPS if spec.role == "setup")


def pipeline_dags(pipelines: list[tuple[Path, PipelineConfig]]) -> dict[str, DAG]:
    """dag_id -> DAG for every loaded pipeline (`infra.airflow.pipelines.load_pipelines`). A config that loads
    can still fail to wire (an unknown placement profile, a YAML gone since): that one is logged and
    skipped too, for the same reason a broken YAML is."""
    dags = {}
    for config_path, config in pipelines:
        try:
            dag = pipeline_dag(config, config_path)
        except (BadInputError, OSError) as exc:
            log.error("pipeline %s (%s) skipped: %s", config.pipeline, config_path, exc)
            continue
        dags[dag.dag_id] = dag
    return dags


def check_placement(config: PipelineConfig) -> None:
    """Raise PlacementError for a placement no task can get (an unknown profile), before any DAG is begun: Airflow
    keeps a DAG whose `with` block raised, with the tasks made so far, so a half-wired DAG would be served."""
    placements(config.placement, executor_remap())


def pipeline_dag(config: PipelineConfig, config_path: Path) -> DAG:
    placement = config.placement
    check_placement(config)
    with DAG(
        dag_id=f"kiln_{config.pipeline}",
        description=config.description or f"kiln pipeline {config.pipeline}: {config.task.type}",
        schedule=pipeline_schedule(config),
        catchup=False,
        max_active_runs=1,
        tags=["kiln", config.task.type],
        default_args=DEFAULT_ARGS,
        params=_params(config),
        doc_md=_doc(config, config_path),
    ) as dag:
        outputs: dict[str, Any] = {}
        steps = {}
        for spec in STEPS:
            if spec.role == "setup":
                outputs["run"] = _resolve_task(spec, config_path, placement.model_dump(mode="json"),
                                               _placed(config, spec))()
            elif spec.role == "step":
                inputs = {name: outputs[name] for name in spec.inputs}
                # Airflow wants ALL_SUCCESS right after a setup task, and a step with an optional input must run
                # past that input's skipped step: such a step reads the run from resolve's XCom instead.
                run = {} if spec.optional_inputs or spec.after else {"run": outputs["run"]}
                made = _step_task(spec, _placed(config, spec))
                if spec.fan_out is not None:  # dynamic task mapping: none when the config has no such section
                    steps[spec.name] = made.partial(inputs=inputs, **run).expand(
                        instance=list(range(spec.instances(config))))
                else:
                    steps[spec.name] = made(inputs=inputs, **run)
                    steps[spec.name].operator.operator_extra_links = links_for(spec)
                for earlier in spec.after:
                    steps[earlier] >> steps[spec.name]
                for name in spec.outputs:
                    outputs[name] = steps[spec.name][name]
            elif spec.role == "approval":
                inputs = {name: outputs[name] for name in spec.inputs}
                approval = PipelineApproval(spec=spec, run=outputs["run"], inputs=inputs, **_placed(config, spec))
                steps[spec.name] = approval.output
                for name in spec.outputs:
                    outputs[name] = approval.output[name]
        last = [s for s in STEPS if s.role == "step"][-1]
        for spec in STEPS:
            if spec.role == "teardown":
                # A mapped step's results are one per instance and carry no artifact: the teardown reads the others.
                unmapped = [s.name for s in STEPS if s.name in steps and s.fan_out is None]
                finish = _teardown_task(spec, unmapped, _placed(config, spec))(run=outputs["run"])
                steps[last.name] >> finish
                finish.as_teardown(setups=outputs["run"])
    return dag


def _params(config: PipelineConfig) -> dict[str, Param]:
    """The trigger form: one typed field per registry param, prefilled with this YAML's value (${VARS}
    unexpanded; `resolve` treats a value equal to the YAML's as no change)."""
    defaults = param_defaults(config)
    return {name: Param(defaults[name], **param_schema(name)) for name in PARAMS}


def _placed(config: PipelineConfig, spec: StepSpec) -> dict[str, Any]:
    """Task arguments for the step's placement (profile and YAML; unset fields keep Airflow's defaults)."""
    chosen = (step_placement(config.placement, spec.placed_as, executor_remap()) if spec.role == "service"
              else step_placement(config.placement, spec.name, executor_remap(), like=spec.placed_as))
    args = placement_args(chosen)
    section, _, field_name = (spec.timeout or "").partition(".")
    if spec.timeout and getattr(config, section) is not None:
        args["execution_timeout"] = timedelta(minutes=getattr(getattr(config, section), field_name))
    if spec.optional_inputs or spec.after:
        # It runs past the skipped step of an optional input (promote past an approval not asked for), and is
        # skipped when all the steps it reads from are (promote after a push that was not blessed).
        args["trigger_rule"] = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    return args


def placement_args(chosen: StepPlacement) -> dict[str, Any]:
    """Task arguments of a placement: executor, queue, pool, and the pod override on Kubernetes."""
    args = {k: v for k, v in chosen.model_dump(exclude={"pod_override"}).items() if v is not None}
    if chosen.pod_override is not None and chosen.executor == "KubernetesExecutor":
        args["executor_config"] = {"pod_override": pod_override(chosen.pod_override)}
    return args


def _rejected(message: str) -> AirflowFailException:
    """Bad input fails the task without retries: a retry cannot fix bad data or a bad config."""
    return AirflowFailException(message)


def _resolve_task(spec: StepSpec, config_path: Path, placement: dict[str, Any], placed: dict[str, Any]) -> Any:
    def resolve() -> str:
        from infra.airflow.deployment import deployment_from_env
        from tasks.snapshot import resolve_run

        context = get_current_context()
        params = {name: context["params"].get(name) for name in PARAMS}
        try:
            return resolve_run(str(config_path), params, deployment_from_env(), context["run_id"], placement)
        except BadInputError as exc:
            raise _rejected(one_line(exc)) from None

    return task(task_id=spec.name, doc_md=spec.description, **placed)(resolve)


def _step_task(spec: StepSpec, placed: dict[str, Any]) -> Any:
    def execute(inputs: dict[str, str], run: str | None = None, instance: int | None = None) -> dict[str, str]:
        from tasks.step_runner import StepRejected, StepSkipped, links, run_step

        ti = get_current_context()["ti"]
        run = run or ti.xcom_pull(task_ids=SETUP.name)
        try:
            outputs = run_step(spec.name, run, ti.try_number, inputs,
                               **({"instance": instance} if instance is not None else {}))
        except StepRejected as exc:
            raise _rejected(str(exc)) from None
        except StepSkipped as exc:  # e.g. push of an unblessed model: skipped in the grid, the run succeeds
            raise AirflowSkipException(str(exc)) from None
        ti.xcom_push(key=LINKS_XCOM, value=links(spec.name, run, outputs))  # read by the extra links
        return outputs

    execute.__name__ = spec.name
    return task(task_id=spec.name, multiple_outputs=True, doc_md=spec.description, **placed)(execute)


def service_task(spec: StepSpec, config: PipelineConfig, config_path: Path, task_id: str | None = None,
                 doc_md: str | None = None) -> Any:
    """A service step (`role: service`) of the pipeline at `config_path`, run on its config as it is when the task
    runs, with the pipeline tasks' placement, error mapping and links; returns the task's XComArg (its result)."""
    def execute() -> dict[str, Any]:
        from infra.airflow.deployment import deployment_from_env
        from tasks.step_runner import StepRejected, StepSkipped, pipeline_links, run_on_pipeline

        context = get_current_context()
        ti, deployment = context["ti"], deployment_from_env()
        try:
            result = run_on_pipeline(spec.name, str(config_path), deployment, context["run_id"], ti.try_number)
        except StepRejected as exc:
            raise _rejected(str(exc)) from None
        except StepSkipped as exc:
            raise AirflowSkipException(str(exc)) from None
        ti.xcom_push(key=LINKS_XCOM, value=pipeline_links(spec.name, str(config_path), deployment,
                                                          context["run_id"], result))
        return result

    execute.__name__ = task_id or spec.name
    made = task(task_id=task_id or spec.name, doc_md=doc_md or spec.description, **_placed(config, spec))(execute)()
    made.operator.operator_extra_links = links_for(spec)
    return made


def _teardown_task(spec: StepSpec, step_names: list[str], placed: dict[str, Any]) -> Any:
    def finish(run: str) -> None:
        from tasks.step_runner import run_step

        ti = get_current_context()["ti"]
        outputs: dict[str, str] = {}
        for name in step_names:  # a skipped or failed step has pushed nothing
            outputs.update(ti.xcom_pull(task_ids=name) or {})
        run_step(spec.name, run, ti.try_number, outputs=outputs)

    return task(task_id=spec.name, doc_md=spec.description, **placed)(finish)


def _doc(config: PipelineConfig, path: Path) -> str:
    rows = "\n".join(f"| {s.name} | {s.description} | {', '.join(s.inputs) or '-'} | {', '.join(s.outputs) or '-'} |"
                     for s in STEPS)
    return (f"# kiln_{config.pipeline}\n\n{config.description or ''}\n\n"
            f"A {config.task.type} pipeline from `{path}`. The trigger form is prefilled with its values.\n\n"
            f"| step | does | reads | writes |\n|---|---|---|---|\n{rows}\n\n"
            f"{CONFIG_MARK} {path} sha256={config_fingerprint(path)}\n")


def kiln_home() -> Path | None:
    home = os.environ.get("KILN_HOME")
    return Path(home) if home else None
