"""Placement profiles under the pipeline's own placement, the --no-cluster remap, the refusal of an
executor the stack lacks (before anything runs), and the pod override the KubernetesExecutor gets."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infra.airflow.placement import (
    PlacementError,
    check_executors,
    load_profile,
    placements,
    pod_override,
    profile_names,
    step_placement,
)
from infra.cli.app import app
from tasks.config import PlacementConfig, validate_config
from tests.data import write_house_csv


def test_the_shipped_profiles_load_and_name_known_steps() -> None:
    from tasks.registry import STEP_NAMES

    assert profile_names() == ["cloud", "hybrid", "local"]
    for name in profile_names():
        assert set(load_profile(name).steps) <= set(STEP_NAMES)
    with pytest.raises(PlacementError, match="placement profile 'gpu-farm' does not exist; profiles are cloud, hybrid"):
        load_profile("gpu-farm")


def test_a_pipeline_overrides_single_steps_of_its_profile() -> None:
    placement = PlacementConfig.model_validate({"profile": "hybrid", "default": {"pool": "kiln"},
                                                "steps": {"validate": {"queue": "fast"}}})
    assert step_placement(placement, "ingest").executor == "CeleryExecutor"
    assert step_placement(placement, "validate").model_dump(exclude_none=True) == {
        "executor": "CeleryExecutor", "queue": "fast", "pool": "kiln"}, "the step's own queue wins; pool from the default"
    train = step_placement(placement, "train")
    assert (train.executor, train.pool, train.pod_override.gpus) == ("KubernetesExecutor", "gpu", 1)
    remapped = step_placement(placement, "train", {"KubernetesExecutor": "LocalExecutor"})
    assert (remapped.executor, remapped.pool, remapped.pod_override) == ("LocalExecutor", "gpu", None)
    assert step_placement(PlacementConfig(), "train").executor is None, "no profile: Airflow's default executor"


def _config(**placement):
    return validate_config({"pipeline": "p", "data": {"source": "x.csv"}, "task": {"type": "regression"},
                            "placement": placement}, "p.yaml")


def test_an_executor_the_stack_lacks_is_refused_in_one_line() -> None:
    hybrid = _config(profile="hybrid")
    check_executors(hybrid, ["LocalExecutor", "CeleryExecutor"], {"KubernetesExecutor": "LocalExecutor"})
    with pytest.raises(PlacementError) as refused:
        check_executors(hybrid, ["LocalExecutor"], {"KubernetesExecutor": "LocalExecutor"})
    assert str(refused.value).startswith("pipeline p: CeleryExecutor (for ingest, validate, transform, "
                                         "infra_validate, push, verify, approve, promote) is not configured in the running "
                                         "Airflow")
    with pytest.raises(PlacementError, match="KubernetesExecutor .* is not configured"):
        check_executors(hybrid, ["LocalExecutor", "CeleryExecutor"])


def test_kiln_run_refuses_it_before_anything_is_triggered(tmp_path, monkeypatch) -> None:
    home = tmp_path / "kiln"
    home.mkdir()
    (home / "stack.json").write_text(json.dumps({"ports": {}, "supervisor_pid": 0, "profile": "local"}))
    config = tmp_path / "celery.yaml"
    config.write_text(f"pipeline: celery\ndata: {{source: {write_house_csv(tmp_path / 'h.csv')}, label_column: price}}\n"
                      "task: {type: regression}\nplacement: {default: {executor: CeleryExecutor, queue: onprem}}\n")
    monkeypatch.setenv("KILN_HOME", str(home))
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "CeleryExecutor (for resolve, ingest" in result.output and "executors: LocalExecutor" in result.output


def test_the_pod_override_is_a_valid_pod() -> None:
    import kubernetes_validate
    from kubernetes.client import ApiClient

    train = step_placement(PlacementConfig(profile="hybrid"), "train")
    pod = ApiClient().sanitize_for_serialization(pod_override(train.pod_override))
    container = pod["spec"]["containers"][0]
    assert container["name"] == "base" and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    pod["spec"]["containers"][0]["image"] = "kiln:test"  # the executor fills it in from its worker pod
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}, **pod}, "1.37",
                                 strict=True)


def test_tune_is_placed_like_train_unless_it_has_a_placement_of_its_own() -> None:
    hybrid = PlacementConfig(profile="hybrid")
    like_train = placements(hybrid)["tune"]
    assert like_train == placements(hybrid)["train"] and like_train.pool == "gpu"
    own = placements(PlacementConfig(profile="hybrid", steps={"tune": {"executor": "CeleryExecutor",
                                                                         "queue": "onprem"}}))["tune"]
    assert (own.executor, own.queue, own.pool) == ("CeleryExecutor", "onprem", "gpu"), "its own fields win"


def test_a_pipeline_that_names_no_profile_takes_the_running_stacks(monkeypatch) -> None:
    from infra.airflow.placement import PROFILE_VARIABLE, placement_lines, profile_of
    from tasks.config import PipelineConfig

    config = PipelineConfig.model_validate({"pipeline": "p", "data": {"source": "d.csv"},
                                            "task": {"type": "regression"}})
    monkeypatch.delenv(PROFILE_VARIABLE, raising=False)
    assert profile_of(config.placement) is None and step_placement(config.placement, "ingest").executor is None
    monkeypatch.setenv(PROFILE_VARIABLE, "hybrid")
    ingest = step_placement(config.placement, "ingest", {"KubernetesExecutor": "LocalExecutor"})
    assert (ingest.executor, ingest.queue) == ("CeleryExecutor", "onprem")
    lines = placement_lines(config, {"KubernetesExecutor": "LocalExecutor"})
    assert "CeleryExecutor queue onprem: ingest, validate, transform, infra_validate, push, verify, approve, promote" \
        in lines and any(line.startswith("LocalExecutor pool gpu: ") and "train" in line for line in lines)
    own = config.model_copy(update={"placement": PlacementConfig(profile="local")})
    assert profile_of(own.placement) == "local" and step_placement(own.placement, "ingest").queue is None
