"""Step caching: a rerun reuses what did not change and says why the rest ran; outputs are reused in place (the
same URIs), a deleted output is a miss, `cache: false` runs everything, and two identical runs at once both
succeed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tasks.artifacts.examples import Examples
from tasks.step_runner import run_step, run_steps
from tests.subprocesses import call_at_once
from tests.tasks.conftest import UNTIL_TRAIN, resolve, write_pipeline

DATA_STEPS = ["ingest", "validate", "transform"]
BODY = "def body(inputs, hparams):\n    import tf_keras as keras\n    return keras.layers.Dense({units})(inputs)\n"


def pipeline(folder: Path, source: Path | str, model: Path, **sections: Any) -> Path:
    return write_pipeline(folder, "cached", source, {"type": "classification"},
                          train={"model": f"{model}:body", "epochs": 1, **sections.pop("train", {})}, **sections)


def run(config: Path, root: Path, store: str, run_id: str, steps: list[str], **params: Any) -> dict[str, Any]:
    """Each step's outputs and cache decision, step by step (run_steps keeps only the last decision)."""
    uri = resolve(config, root, store, params=params, run_id=run_id)
    outputs: dict[str, Any] = {"run": uri}
    decisions = {}
    for step in steps:
        result = run_steps(uri, [step], available=outputs)
        decisions[step] = result.pop("cache")
        outputs.update(result)
    return {"outputs": outputs, "cache": decisions}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(BODY.format(units=8))
    return path


@pytest.mark.slow
def test_a_rerun_with_other_epochs_reuses_the_data_steps_and_retrains(tiny_digits_csv, tmp_path, model_file,
                                                                      mlflow_store) -> None:
    config = pipeline(tmp_path, tiny_digits_csv, model_file)
    cold = run(config, tmp_path, mlflow_store, "cold", UNTIL_TRAIN)
    assert {s: d["reason"] for s, d in cold["cache"].items()} == dict.fromkeys(UNTIL_TRAIN, "no earlier output")

    warm = run(config, tmp_path, mlflow_store, "warm", UNTIL_TRAIN, epochs=2)
    for step in DATA_STEPS:
        assert warm["cache"][step] == {**cold["cache"][step], "hit": True, "from_run": "cold",
                                       "reason": "cached (run cold)"}
    for name in ("examples", "statistics", "schema", "transform"):
        assert warm["outputs"][name] == cold["outputs"][name], "reused in place: the same URI"
    assert warm["cache"]["train"]["hit"] is False
    assert warm["cache"]["train"]["reason"] == "re-ran: train.epochs changed 1 → 2"
    assert warm["outputs"]["model"] != cold["outputs"]["model"]

    client = MlflowClient(mlflow_store)
    [ingest_run] = client.search_runs([client.get_experiment_by_name("kiln").experiment_id],
                                      "tags.`kiln.step` = 'ingest' and tags.`kiln.cached_from` = 'cold'")
    assert ingest_run.data.tags["kiln.cache_key"].startswith(warm["cache"]["ingest"]["key"])
    [parent] = client.search_runs([ingest_run.info.experiment_id],
                                  "tags.`kiln.role` = 'parent' and tags.`kiln.run_id` = 'warm'")
    assert parent.data.tags["kiln.data_fingerprint"] == \
        Examples.read(warm["outputs"]["examples"]).properties.source_sha256, "lineage: the data the run used"

    model_file.write_text(BODY.format(units=9))  # the user's model code: train re-runs, nothing else does
    edited = run(config, tmp_path, mlflow_store, "edited", UNTIL_TRAIN, epochs=2)
    assert [s for s, d in edited["cache"].items() if not d["hit"]] == ["train"]
    assert edited["cache"]["train"]["reason"] == "re-ran: the model code (train.model) changed"

    off = run(config, tmp_path, mlflow_store, "off", DATA_STEPS, cache=False)
    assert {d["reason"] for d in off["cache"].values()} == {"cache off"}
    forced = run(config, tmp_path, mlflow_store, "forced", DATA_STEPS, no_cache_steps=["validate"])
    assert [s for s, d in forced["cache"].items() if not d["hit"]] == ["validate"]
    assert forced["cache"]["transform"]["hit"], "validate re-made the same statistics and schema: transform hits"


def test_a_new_span_misses_ingest_and_a_deleted_output_is_a_miss(tiny_digits_csv, tmp_path, model_file,
                                                                 mlflow_store) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    shutil.copy(tiny_digits_csv, spans / "span-1.csv")
    config = pipeline(tmp_path, spans / "span-{SPAN}.csv", model_file)
    first = run(config, tmp_path, mlflow_store, "first", ["ingest"])
    assert run(config, tmp_path, mlflow_store, "same", ["ingest"])["cache"]["ingest"]["hit"]

    lines = tiny_digits_csv.read_text().splitlines()
    (spans / "span-2.csv").write_text("\n".join(lines[:300]) + "\n")
    newer = run(config, tmp_path, mlflow_store, "newer", ["ingest"])["cache"]["ingest"]
    assert newer["hit"] is False and newer["reason"].startswith("re-ran: data.source changed ")
    assert newer["reason"].endswith("span-1.csv → " + str(spans / "span-2.csv") + ", data.span changed 1 → 2")

    (spans / "span-2.csv").unlink()  # back to span 1, whose examples are then deleted
    shutil.rmtree(first["outputs"]["examples"])
    gone = run(config, tmp_path, mlflow_store, "gone", ["ingest"])
    assert gone["cache"]["ingest"]["hit"] is False
    assert gone["cache"]["ingest"]["reason"] == "the earlier output examples (run first) is gone"
    assert Examples.read(gone["outputs"]["examples"]).properties.row_counts == \
        Examples.read(run(config, tmp_path, mlflow_store, "again", ["ingest"])["outputs"]["examples"]).properties.row_counts


def _ingest(config: str, root: str, store: str, run_id: str) -> str:
    return run_step("ingest", resolve(Path(config), Path(root), store, run_id=run_id), inputs={})["examples"]


def test_two_identical_runs_at_once_both_succeed(tiny_digits_csv, tmp_path, model_file) -> None:
    mlflow_store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own: the processes share nothing with the suite's
    MlflowClient(mlflow_store).search_experiments()  # its tables made here, not by both processes at once
    config = pipeline(tmp_path, tiny_digits_csv, model_file)
    made = call_at_once("tests.tasks.test_cache:_ingest",
                        [[str(config), str(tmp_path), mlflow_store, f"twin-{i}"] for i in range(2)])
    assert len(set(made)) == 2, "both missed together: each published its own examples"
    rows = [Examples.read(uri).properties.row_counts for uri in made]
    assert rows[0] == rows[1]
    assert run(config, tmp_path, mlflow_store, "third", ["ingest"])["cache"]["ingest"]["from_run"] in \
        ("twin-0", "twin-1")


def test_kiln_cache_lists_and_prunes_the_entries_whose_outputs_are_gone(tiny_digits_csv, tmp_path, model_file,
                                                                        mlflow_store) -> None:
    from typer.testing import CliRunner

    from infra.cli.app import app

    config = pipeline(tmp_path, tiny_digits_csv, model_file)
    made = run(config, tmp_path, mlflow_store, "made", ["ingest", "validate"])["outputs"]
    root = str(tmp_path / "artifacts")

    def kiln(*args: str) -> str:
        result = CliRunner().invoke(app, ["cache", *args, "cached", "--artifact-root", root])
        assert result.exit_code == 0, result.output
        return result.stdout

    listed = kiln("ls")
    assert "ingest" in listed and "validate" in listed and listed.count("present") == 2
    assert "0 entries removed" in kiln("prune")
    shutil.rmtree(made["schema"])
    assert "gone" in kiln("ls")
    pruned = kiln("prune")
    assert "removed validate" in pruned and "1 entries removed" in pruned
    assert "validate" not in kiln("ls")
    assert "1 entries removed" in kiln("prune", "--older-than", "0s")
    refused = CliRunner().invoke(app, ["cache", "prune", "cached", "--older-than", "a week"])
    assert refused.exit_code == 2 and "--older-than" in refused.stderr
