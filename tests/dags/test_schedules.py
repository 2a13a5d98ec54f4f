"""Schedules from the YAML, as the DagBag sees them: a cron timetable; a retrain on each new span (the
data asset); a retrain on drift (the drift asset); and the drift monitor of every spanned pipeline,
on its own cron or a new span, whose second task emits the drift asset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from infra.airflow.pipelines import register

DAGS = Path(__file__).resolve().parents[2] / "dags"
PROBE = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    bag = DagBag(dag_folder=sys.argv[1])
    out = {}
    for dag_id, dag in bag.dags.items():
        timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable  # as the scheduler sees it
        condition = getattr(dag.timetable, "asset_condition", None)
        out[dag_id] = {"timetable": type(timetable).__name__, "summary": timetable.summary,
                       "assets": sorted(a.name for a in getattr(condition, "objects", [condition] if condition else [])),
                       "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
                       "outlets": {t.task_id: [o.name for o in t.outlets] for t in dag.tasks if t.outlets}}
    print("RESULT " + json.dumps({"dags": out, "errors": len(bag.import_errors)}))
""")


def _pipeline(folder: Path, name: str, schedule: str | None, spanned: bool = True, monitor: str = "") -> Path:
    source = f"data/{name}/span-{{SPAN}}.csv" if spanned else f"data/{name}.csv"
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: {name}
        data: {{source: {json.dumps(source)}, label_column: y}}
        task: {{type: regression}}
        schedule: {json.dumps(schedule)}
    """) + monitor)
    return path


def test_schedules_and_monitors_in_the_dagbag(tmp_path) -> None:
    home = tmp_path / "kiln"
    for name, schedule, spanned, monitor in (
            ("nightly", "0 3 * * *", False, ""),
            ("fresh", "on_new_data", True, "monitor: {schedule: '@daily'}\n"),
            ("drifty", "on_drift", True, ""),
            ("watched", "on_drift", False, "serving: {request_log: {sampling_rate: 0.5, path: logs}}\n"),
            ("scored", None, False, "batch: {data: 'in/span-{SPAN}.csv', output: 'out/{span}', "
                                    "schedule: on_new_data}\n")):
        register(home, name, _pipeline(tmp_path, name, schedule, spanned, monitor))
    env = {**os.environ, "KILN_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run([sys.executable, "-c", PROBE, str(DAGS)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    bag = json.loads(line.removeprefix("RESULT "))
    dags = bag["dags"]
    assert bag["errors"] == 0
    assert dags["kiln_nightly"]["timetable"] == "CronTriggerTimetable" and dags["kiln_nightly"]["summary"] == "0 3 * * *"
    assert dags["kiln_nightly"]["catchup"] is False and dags["kiln_nightly"]["max_active_runs"] == 1
    assert "kiln_monitor_nightly" not in dags, "no spans, no monitor"
    assert dags["kiln_fresh"]["timetable"] == "AssetTriggeredTimetable"
    assert dags["kiln_fresh"]["assets"] == ["kiln_fresh_data"]
    assert dags["kiln_drifty"]["assets"] == ["kiln_drifty_drift"]
    assert dags["kiln_digits"]["timetable"] == "NullTimetable", "the shipped demo runs when triggered"
    for name, cron in (("fresh", "0 0 * * *"), ("drifty", "0 * * * *")):
        monitor = dags[f"kiln_monitor_{name}"]
        assert monitor["timetable"] == "AssetOrTimeSchedule" and cron in monitor["summary"]
        assert monitor["assets"] == [f"kiln_{name}_data"]
        assert monitor["outlets"] == {"trigger_retrain": [f"kiln_{name}_drift"]}
    watched = dags["kiln_monitor_watched"]  # no spans: its served traffic is what the monitor reads
    assert watched["timetable"] == "CronTriggerTimetable" and watched["assets"] == []
    assert watched["outlets"] == {"trigger_retrain": ["kiln_watched_drift"]}
    assert dags["kiln_watched"]["assets"] == ["kiln_watched_drift"]
    assert dags["kiln_batch_scored"]["assets"] == ["kiln_scored_batch_data"], "each new span of batch.data"
    assert "kiln_monitor_scored" not in dags and "kiln_batch_nightly" not in dags
