"""DAG integrity, generated from the step registry: every pipeline YAML gives a DAG `kiln_<pipeline>`
whose tasks, dependencies, params and placement are what the registry and the YAML say; the serving
sync DAG has one task per pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from infra.airflow.pipelines import shipped
from infra.airflow.sync_dag import DAG_ID as SYNC_DAG
from tasks.config import load_config
from tasks.registry import PARAMS, STEP_NAMES, STEPS, param_defaults, param_schema

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def pipeline_dags(dagbag):
    return {dag_id: dag for dag_id, dag in dagbag.dags.items()
            if dag_id != SYNC_DAG and not dag_id.startswith("kiln_batch_")}


def test_every_shipped_pipeline_is_a_dag(dagbag):
    assert dagbag.import_errors == {}
    assert {f"kiln_{name}" for name in shipped()} | {SYNC_DAG, "kiln_batch_digits"} == set(dagbag.dag_ids)
    assert set(dagbag.dag_ids) >= {"kiln_digits", "kiln_cancer", "kiln_diabetes"}


def test_the_batch_dag_maps_scoring_over_the_planned_shards_and_commits_whatever_happened(dagbag):
    dag = dagbag.dags["kiln_batch_digits"]
    assert sorted(dag.task_ids) == ["commit", "plan_batch", "score"] and dag.schedule is None
    score, commit = dag.get_task("score"), dag.get_task("commit")
    assert score.upstream_task_ids == {"plan_batch"} and commit.upstream_task_ids == {"score"}
    assert type(score).__name__ == "DecoratedMappedOperator", "mapped at run time over plan_batch's shards"
    assert commit.trigger_rule == "all_done", "commit closes the job FAILED when a shard failed"
    assert score.executor == dagbag.dags["kiln_digits"].get_task("evaluate").executor, "placed like evaluate"
    assert set(dag.params) == {"data", "output", "alias", "version", "overwrite", "allow_unblessed"}
    assert dag.params["alias"] == "champion" and dag.params["version"] is None


def test_the_serving_sync_runs_every_few_minutes_with_one_task_per_pipeline(dagbag):
    from datetime import timedelta

    from infra.airflow.links import ModelVersionLink, ServedModelLink

    dag = dagbag.dags[SYNC_DAG]
    assert sorted(dag.task_ids) == sorted(f"sync_{name}" for name in shipped())
    assert dag.schedule == timedelta(minutes=5)
    assert dag.max_active_runs == 1 and not dag.catchup and dag.is_paused_upon_creation is False
    for task in dag.tasks:
        assert task.owner == "kiln" and task.retries >= 1 and not task.upstream_task_ids
        assert {type(link) for link in task.operator_extra_links} == {ModelVersionLink, ServedModelLink}


def test_every_dag_has_tags_owner_retries_and_docs(pipeline_dags):
    for dag_id, dag in pipeline_dags.items():
        assert "kiln" in dag.tags, f"{dag_id} has no kiln tag"
        assert dag.doc_md and "kiln-config:" in dag.doc_md, f"{dag_id} does not say which YAML it was built from"
        assert dag.schedule is None and dag.max_active_runs == 1 and not dag.catchup
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} is never retried"


def test_tasks_and_dependencies_are_the_registrys(pipeline_dags):
    produced_by = _producers()
    for dag in pipeline_dags.values():
        assert sorted(dag.task_ids) == sorted(STEP_NAMES)
        for spec in STEPS:
            upstream = set(dag.get_task(spec.name).upstream_task_ids)
            if spec.role in ("step", "approval"):
                # A step with an optional input reads the run from resolve's XCom rather than as an argument:
                # Airflow wants ALL_SUCCESS right after a setup task, and such a step runs past a skipped one.
                run = set() if spec.optional_inputs or spec.after else {"resolve"}
                assert upstream == {produced_by[name].name for name in spec.inputs} | run | set(spec.after), spec.name
        last_step = [s for s in STEPS if s.role == "step"][-1].name
        teardown = dag.get_task("finish_tracking")
        assert teardown.is_teardown and set(teardown.upstream_task_ids) == {"resolve", last_step}
        assert dag.get_task("resolve").upstream_task_ids == set()


def test_params_are_the_registrys_prefilled_with_the_pipelines_own_yaml(pipeline_dags):
    for name, path in shipped().items():
        dag = pipeline_dags[f"kiln_{name}"]
        yaml_values = param_defaults(load_config(path, expand_env=False))
        assert set(dag.params.keys()) == set(PARAMS)
        for param_name in PARAMS:
            param = dag.params.get_param(param_name)
            assert param.value == yaml_values[param_name], f"{dag.dag_id}.{param_name}"
            assert {**param.schema, "description": param.description} == param_schema(param_name)
    digits = pipeline_dags["kiln_digits"].params
    assert (digits["epochs"], digits["data_source"]) == (12, "${KILN_HOME}/data/digits.csv")
    assert pipeline_dags["kiln_diabetes"].params["epochs"] == 60, "each DAG has its own YAML's values"


def test_the_trigger_form_groups_the_params_by_the_step_that_declares_them(pipeline_dags):
    params = pipeline_dags["kiln_digits"].params
    sections = {name: params.get_param(name).schema["section"] for name in PARAMS}
    assert sections["data_source"] == "Ingest" and sections["epochs"] == sections["learning_rate"] == "Train"
    assert sections["thresholds"] == "Evaluate" and sections["variants"] == "Optimize"
    assert sections["force_push_reason"] == "Push"
    assert sections["serving_format"] == "Optimize", "declared by the step that writes the version folder"
    assert sections["promotion"] == sections["promotion_timeout_minutes"] == "Approve"
    assert sections["cache"] == sections["no_cache_steps"] == "Cache"
    assert list(dict.fromkeys(sections.values())) == ["Cache", "Ingest", "Tune", "Train", "Optimize", "Evaluate",
                                                      "Push", "Approve"], "run order, the run's cache first"


def test_the_approval_waits_for_a_person_and_promote_runs_past_it_when_nobody_is_asked(pipeline_dags):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = pipeline_dags["kiln_digits"]
    approve, promote = dag.get_task("approve"), dag.get_task("promote")
    assert isinstance(approve, ApprovalOperator), "Airflow's Human-in-the-loop approval: no worker slot while waiting"
    assert approve.defaults == [ApprovalOperator.REJECT], "a timeout answers Reject"
    assert set(approve.params.keys()) == {"comment"}, "the form asks a comment, not the trigger's params again"
    assert approve.multiple_outputs, "an approval skipped when nobody is asked reads as None downstream"
    assert set(promote.upstream_task_ids) == {"push", "verify", "approve"}
    # Runs after a skipped approval (promotion: auto); skipped when push and verify were (not blessed); a
    # rejection or a timeout skips it explicitly.
    assert promote.trigger_rule == "none_failed_min_one_success"


def test_the_trigger_form_refuses_a_value_outside_the_fields_bounds(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["kiln_digits"].params)
    params["epochs"] = 3
    params["thresholds"] = {"accuracy": 0.9}
    with pytest.raises(ParamValidationError, match="epochs: 0 is less than the minimum of 1"):
        params["epochs"] = 0
    with pytest.raises(ParamValidationError, match="learning_rate: 1 is greater than or equal to the maximum of 1"):
        params["learning_rate"] = 1
    with pytest.raises(ParamValidationError, match="thresholds"):
        params["thresholds"] = {"accuracy": "high"}
    with pytest.raises(ParamValidationError, match="variants"):
        params["variants"] = ["int4"]
    with pytest.raises(ParamValidationError, match="epochs: None is not of type 'integer'"):
        params["epochs"] = None


PROBE = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dag = bag.dags["kiln_placed"]
    print("RESULT " + json.dumps({t.task_id: [t.queue, t.pool, t.executor] for t in dag.tasks}))
""")


def test_a_pipeline_registered_from_anywhere_is_a_dag_placed_by_its_yaml(tmp_path):
    """A YAML outside the repo, registered under KILN_HOME (as `kiln run` does), placed per step."""
    from infra.airflow.pipelines import register

    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    config = tmp_path / "elsewhere" / "placed.yaml"
    config.parent.mkdir()
    config.write_text(textwrap.dedent("""
        pipeline: placed
        data: {source: ../data.csv}
        task: {type: regression}
        placement:
          default: {executor: LocalExecutor, pool: default_pool}
          steps:
            train: {executor: LocalExecutor, queue: gpu, pool: training}
            finish_tracking: {queue: bookkeeping}
    """))
    home = tmp_path / "kiln"
    assert register(home, "placed", config) is True
    assert register(home, "placed", config) is False, "registering the same file again changes nothing"
    env = {**os.environ, "KILN_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run([sys.executable, "-c", PROBE, str(DAGS)], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    placed = json.loads(line.removeprefix("RESULT "))
    assert placed["train"][:2] == ["gpu", "training"]
    assert placed["finish_tracking"][0] == "bookkeeping"
    assert placed["ingest"][1] == "default_pool" and placed["ingest"][0] != "gpu"
    assert {p[2] for p in placed.values()} == {"LocalExecutor"}


def _misplaced_yaml() -> str:
    """A pipeline that loads but cannot be placed: its placement profile does not exist."""
    config = yaml.safe_load((REPO / "pipelines" / "digits.yaml").read_text())
    return yaml.safe_dump({**config, "pipeline": "broken", "placement": {"profile": "nowhere"}})


@pytest.mark.parametrize("text, why", [
    ("pipeline: broken\ndata: {source: x.csv}\n", "missing field 'task'"),  # invalid
    (_misplaced_yaml(), "placement profile 'nowhere' does not exist"),  # valid, but no task can be placed
])
def test_a_broken_yaml_does_not_take_the_other_pipelines_down(tmp_path, text, why):
    from infra.airflow.pipelines import register

    config = tmp_path / "broken.yaml"
    config.write_text(text)
    register(tmp_path / "kiln", "broken", config)
    probe = textwrap.dedent("""
        import json, sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder=sys.argv[1])
        print("RESULT " + json.dumps({"dags": sorted(bag.dag_ids), "errors": len(bag.import_errors)}))
    """)
    env = {**os.environ, "KILN_HOME": str(tmp_path / "kiln"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run([sys.executable, "-c", probe, str(DAGS)], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    outcome = json.loads(line.removeprefix("RESULT "))
    assert outcome == {"dags": sorted([*(f"kiln_{n}" for n in shipped()), SYNC_DAG, "kiln_batch_digits"]),
                       "errors": 0}
    assert "pipeline broken" in result.stdout + result.stderr and why in result.stdout + result.stderr


def _producers():
    """Output name -> the step that produces it (names are unique across the pipeline)."""
    return {output: spec for spec in STEPS for output in spec.outputs}


def test_the_batch_form_left_as_the_yaml_keeps_its_expanded_values(monkeypatch) -> None:
    from infra.airflow.batch_dag import _with_form
    from tasks.config import BatchConfig

    parsed = BatchConfig(data="${KILN_HOME}/data/d.csv", output="${KILN_HOME}/out/{run}", version=3)
    now = BatchConfig(data="/home/k/data/d.csv", output="/home/k/out/{run}", version=3)
    form = {"data": parsed.data, "output": parsed.output, "alias": "champion", "version": 3, "overwrite": False}
    assert _with_form(now, parsed, form) == now, "the prefilled form is no change"
    monkeypatch.setenv("SCORES", "/scores")
    changed = _with_form(now, parsed, {**form, "output": "${SCORES}/{run}", "version": None})
    assert (changed.data, changed.output, changed.version) == ("/home/k/data/d.csv", "/scores/{run}", None)
