"""`kiln status`'s retraining columns from Airflow's records (a stand-in REST client): a pipeline watched by its
served traffic has a monitor without spans, and the last check says how many served requests it measured."""

from __future__ import annotations

import textwrap

from infra.cli.retraining_status import retraining_row
from tasks.config import load_config


class FakeAirflow:
    def __init__(self, dags: set[str], result: dict):
        self.dags, self.result = dags, result

    def dag(self, dag_id: str):
        return {"is_paused": False, "next_dagrun_run_after": None} if dag_id in self.dags else None

    def asset(self, name: str):
        return None

    def latest_runs(self, dag_id: str, limit: int):
        return [{"state": "success", "end_date": "2026-12-07T10:00:00Z", "dag_run_id": "scheduled__1"}]

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        return self.result


def _config(tmp_path, serving: str = "", schedule: str = "on_drift"):
    path = tmp_path / "churn.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: churn
        data: {{source: churn.csv, label_column: churned}}
        task: {{type: classification}}
        schedule: {schedule}
    """) + serving)
    return load_config(path)


def test_the_last_check_of_served_traffic_shows_its_verdict_and_requests(tmp_path) -> None:
    config = _config(tmp_path, "serving: {request_log: {sampling_rate: 0.5, path: logs}}\n")
    result = {"drifted": True, "drifted_features": ["served skew: tenure"], "champion_version": 3,
              "served_requests": 240}
    *_, check = retraining_row(FakeAirflow({"kiln_churn", "kiln_monitor_churn"}, result), config)
    assert check == "2026-12-07 10:00 UTC success: drift in served skew: tenure (240 served requests measured)"


def test_a_pipeline_with_neither_spans_nor_request_logs_has_no_monitor(tmp_path) -> None:
    config = _config(tmp_path, schedule="null")
    *_, check = retraining_row(FakeAirflow({"kiln_churn"}, {}), config)
    assert check == "no monitor (no {SPAN} in data.source, no serving.request_log)"
