"""Every Airflow task state prints through `kiln run`, with and without --json (issue 11: a state without
a style crashed the printer with rich's MarkupError). No stack: the follow loop and the summary are
replaced by fakes that report every state Airflow knows, one it does not, and one that looks like markup."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from airflow.utils.state import TaskInstanceState
from typer.testing import CliRunner

import infra.cli.app as cli
import infra.cli.reports as reports
from infra.cli.airflow_api import TaskState
from tasks.config import PipelineConfig, PlacementConfig

STATES = [state.value for state in TaskInstanceState]  # a state a new Airflow adds is tested too
ODD = ["none_of_the_above", "[/]", "[bold]closing[/]", "up_for_retry[/]"]


def task(state: str | None, try_number: int = 1, duration: float | None = None) -> TaskState:
    return TaskState("train", state, try_number, duration, None, None)


def test_every_known_state_has_a_style():
    assert set(STATES) <= set(reports.STATE_STYLE), "style the new Airflow task state in infra/cli/reports.py STATE_STYLE"


@pytest.mark.parametrize("state", [*STATES, None, *ODD])
def test_every_state_prints_as_it_is(state, capsys):
    reports.print_task(task(state))
    assert capsys.readouterr().err.split() == ["train", state or "none"]


def test_the_try_number_shows_from_the_second_try(capsys):
    reports.print_task(task("running", 2))
    reports.print_task(task("success", 2, 3.25))
    reports.print_task(task("queued", 1))
    assert capsys.readouterr().err.splitlines() == [
        "  train           running (try 2)", "  train           success (try 2) (3.2s)", "  train           queued"]


FAILED = {"run_id": "kiln__x[/]", "state": "failed", "failed_task": "train", "error": "task train failed: [/] oops",
          "failed_log_tail": ["[bold]not markup[/]", "[/]"], "task_states": {"train": "failed"}}
SUCCEEDED = {
    "run_id": "kiln__20260101T000000Z__[/]", "state": "success", "task": "classification", "wall_seconds": 10.0,
    "scheduling_overhead_seconds": 1.0, "scheduling_overhead_percent": 10.0, "task_seconds": {"train": 9.0},
    "task_states": {"train": "success"}, "metrics": {"accuracy": 0.9}, "metrics_trained": {"accuracy": 0.91},
    "shipped": {"variant": "int8[/]", "format": "tflite", "sha256": "ab" * 32, "bytes": 45, "gzip_bytes": 25,
                "trained_saved_model_bytes": 450},
    "train": {"restarts": 1, "resumed_from_epoch": 2},
    "blessing": {"blessed": True, "checks": [{"name": "accuracy [/]", "value": 0.9, "threshold": 0.8, "passed": True}],
                 "champion_version": None, "champion_metrics": None},
    "optimize": {"baseline": {"name": "float32 [/]", "metric_name": "accuracy", "metric": 0.9, "bytes": 100,
                              "gzip_bytes": 50, "latency_ms_p50": 0.1, "sparsity": 0.0, "within_budget": True,
                              "skipped_reason": None},
                 "variants": [{"name": "int8[/]", "metric": 0.89, "bytes": 40, "gzip_bytes": 20, "latency_ms_p50": 0.1,
                               "sparsity": 0.0, "within_budget": True, "skipped_reason": None},
                              {"name": "pruned", "skipped_reason": "[/] no"}],
                 "selected": "int8[/]", "budget": 0.01, "budget_unit": "accuracy"},
    "promoted": False, "not_promoted": "push was skipped [/]",
    "mlflow": {"model_name": "kiln-fake", "version": 1, "blessed": True, "aliases": "unavailable ([/])"},
    "serving": {"model_name": "fake", "versions": [], "labels": {}, "error": "GET x: ConnectError: [/]"},
}


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """`kiln run` with a follow loop that reports every state and a summary given by the test."""
    import infra.airflow.pipelines
    import infra.cli.runner

    outcome: dict = {}

    def follow(stack, config, config_path, params, on_task, report=lambda line: None, **kwargs):
        report("kiln_fake is parsed [/]")
        for state in [*STATES, None, *ODD]:
            on_task(task(state, 2 if state == "running" else 1))
        return SimpleNamespace(), outcome["summary"]["run_id"]

    home = tmp_path / "kiln"
    monkeypatch.setattr(infra.cli.runner, "trigger_and_follow", follow)
    monkeypatch.setattr(infra.cli.runner, "summarize", lambda client, stack, run_id, config: dict(outcome["summary"]))
    monkeypatch.setattr(infra.airflow.pipelines, "register", lambda *args: False)
    config = PipelineConfig.model_validate({"pipeline": "fake", "data": {"source": "fake.csv"},
                                            "task": {"type": "regression"}, "placement": PlacementConfig()})
    monkeypatch.setattr(cli, "validated_config", lambda path, overrides, home: config)
    monkeypatch.setattr(cli.Stack, "load", classmethod(lambda cls, home_path: SimpleNamespace(
        home=home, executors=["LocalExecutor"], remap={}, profile="local")))
    return outcome


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("summary", [FAILED, SUCCEEDED], ids=["failed", "succeeded"])
def test_kiln_run_prints_every_state_and_its_summary(fake_run, summary, as_json, tmp_path):
    fake_run["summary"] = summary
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "fake.yaml"), "--home", str(tmp_path / "kiln"),
                                          *(["--json"] if as_json else [])])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == (0 if summary["state"] == "success" else 1)
    printed = result.output
    for state in [*STATES, "none", *ODD]:
        assert f"{state}" in printed
    assert "running (try 2)" in printed
    assert "placement (profile local):" in printed and "LocalExecutor: resolve, ingest" in printed, "the stack's profile"
    if as_json:
        body = printed[printed.index("{\n"):printed.rindex("}") + 1]
        assert json.loads(body)["run_id"] == summary["run_id"]
    else:
        assert summary["run_id"] in printed
    saved = tmp_path / "kiln" / "runs" / summary["run_id"].replace("/", "_") / "summary.json"
    assert json.loads(saved.read_text())["run_id"] == summary["run_id"]


def test_a_service_that_does_not_answer_after_the_run_is_one_line(fake_run, tmp_path, monkeypatch):
    import httpx

    import infra.cli.runner

    def summarize(client, stack, run_id, config):
        raise httpx.ConnectError("[Errno 111] Connection refused\nsecond line")

    fake_run["summary"] = FAILED
    monkeypatch.setattr(infra.cli.runner, "summarize", summarize)
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "fake.yaml"), "--home", str(tmp_path / "kiln")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == "error: ConnectError: [Errno 111] Connection refused"
