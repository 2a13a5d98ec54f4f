"""Fixtures for the pipeline steps: pipeline YAMLs on generated data, a temp MLflow store, run
snapshots resolved from them, and trained models shared by the later steps' tests.

Steps run through `tasks.step_runner` (as the DAG runs them), so every test exercises the registry's
input/output checks and the run snapshot too.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import TrainConfig
from tasks.context import ServingEndpoints
from tasks.features import FeatureSpec, LabelSpec, Preprocessing
from tasks.snapshot import Deployment, resolve_run
from tasks.step_runner import run_steps
from tasks.training.spec import CompressSpec, TrainSpec, WorkerSpec
from tests.data import write_churn_csv, write_house_csv

REPO = Path(__file__).resolve().parents[2]
CURATED_DIGITS_SCHEMA = REPO / "pipelines" / "digits.schema.pbtxt"
UNTIL_TRAIN = ["ingest", "validate", "transform", "train"]


def write_pipeline(folder: Path, name: str, source: Path, task: dict[str, Any], **sections: Any) -> Path:
    """A pipeline YAML in `folder`; `sections` are merged over small, fast defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "pipeline": name,
        "data": {"source": str(source), "label_column": sections.pop("label", "label"), **sections.pop("data", {})},
        "task": task,
        "train": {"epochs": 3, "batch_size": 32, "worker_timeout_seconds": 300, **sections.pop("train", {})},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def digits_pipeline(folder: Path, csv: Path, **sections: Any) -> Path:
    return write_pipeline(folder, "digits", csv, {"type": "classification"},
                          data={"schema_path": str(CURATED_DIGITS_SCHEMA), **sections.pop("data", {})},
                          transform={"feature_groups": {"pixels": ["pixel_*"]}},
                          train={"model": "cnn", "hparams": {"image_shape": [8, 8, 1]}, **sections.pop("train", {})},
                          **sections)


def churn_pipeline(folder: Path, csv: Path, **sections: Any) -> Path:
    return write_pipeline(folder, "churn", csv, sections.pop("task", {"type": "classification"}), label="churned",
                          train={"epochs": 5, **sections.pop("train", {})}, **sections)


def house_pipeline(folder: Path, csv: Path, **sections: Any) -> Path:
    return write_pipeline(folder, "house", csv, sections.pop("task", {"type": "regression"}), label="price",
                          train={"epochs": 30, "learning_rate": 0.01, **sections.pop("train", {})}, **sections)


def resolve(config: Path, root: Path, tracking_uri: str | None = None, serving: ServingEndpoints | None = None,
            params: dict[str, Any] | None = None, run_id: str | None = None) -> str:
    """A run snapshot for `config` with artifacts under `root`; returns its URI.

    The run id defaults to one per test folder: tests share an MLflow store, where a run id names the
    parent run (and a retry of it).
    """
    deployment = Deployment(artifact_root=str(root / "artifacts"), tracking_uri=tracking_uri, serving=serving)
    return resolve_run(str(config), params or {}, deployment, run_id or default_run_id(root))


def evaluate_inputs(trained: dict[str, Any]) -> dict[str, str]:
    """What evaluate reads of a trained (and shipped) fixture."""
    return {key: trained[key] for key in ("optimized", "model", "examples")}


def worker_spec(base: str | Path, mode: str = "train", **fields: Any) -> WorkerSpec:
    """A worker spec of `mode` for a one-feature regression, every path under `base` (a folder or a URL);
    `fields` replace the spec's own."""
    base = str(base).rstrip("/")
    shared: dict[str, Any] = {
        "train_files": [f"{base}/examples/train-0.parquet"], "eval_files": [f"{base}/examples/eval-0.parquet"],
        "num_train": 100, "num_eval": 20, "model": "mlp", "hparams": {}, "train": TrainConfig(),
        "preprocessing": Preprocessing(
            features=[FeatureSpec(name="x", kind="numeric", columns=["x"], column_types=["float"], mean=[0.0],
                                  variance=[1.0])],
            label=LabelSpec(column="y", value_type="float", task="regression")),
        "scratch_dir": f"{base}/scratch"}
    if mode == "train":
        return TrainSpec(**{**shared, "saved_model_dir": f"{base}/saved_model", "metrics_path": f"{base}/metrics.jsonl",
                            "backup_dir": f"{base}/backup", **fields})
    return CompressSpec(**{**shared, "initial_weights": f"{base}/model/saved_model/variables/variables",
                           "fine_tunes": ["pruned", "qat"], "fine_tune_epochs": 1, "learning_rate": 0.001,
                           "target_sparsity": 0.5, "prune_skip": [],
                           "outputs": {"pruned": f"{base}/pruned", "qat": f"{base}/qat"},
                           "report_path": f"{base}/fine_tunes.json", **fields})


def default_run_id(root: Path) -> str:
    return f"manual__{root.name}"


def step_folder(root: Path, pipeline: str, step: str) -> Path:
    return root / "artifacts" / pipeline / default_run_id(root) / step


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A temp SQLite MLflow store (its artifacts land beside it)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def churn_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_churn_csv(tmp_path_factory.mktemp("churn") / "churn.csv")


@pytest.fixture(scope="session")
def house_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_house_csv(tmp_path_factory.mktemp("house") / "house.csv")


def _trained(root: Path, config: Path, tracking_uri: str) -> dict[str, Any]:
    run = resolve(config, root, tracking_uri, run_id="session-run")
    trained = {"config": config, **run_steps(run, UNTIL_TRAIN)}
    # The version folder that ships with no compression (optimize.variants: []): the trained SavedModel, what
    # evaluate scores in tests that are not about compression.
    shipping = resolve(config, root, tracking_uri, params={"variants": []}, run_id="session-run-shipped")
    return {**trained, **run_steps(shipping, ["optimize"], available=trained)}


@pytest.fixture(scope="session")
def trained_digits(tiny_digits_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ingest -> validate -> transform -> train (cnn, 3 epochs) on 400 digits rows."""
    root = tmp_path_factory.mktemp("trained-digits")
    return _trained(root, digits_pipeline(root, tiny_digits_csv), mlflow_store)


@pytest.fixture(scope="session")
def trained_churn(churn_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same on the churn CSV (numeric, string, boolean columns, missing values, a string label)."""
    root = tmp_path_factory.mktemp("trained-churn")
    return _trained(root, churn_pipeline(root, churn_csv), mlflow_store)


@pytest.fixture(scope="session")
def trained_house(house_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same on the house CSV (a regression)."""
    root = tmp_path_factory.mktemp("trained-house")
    return _trained(root, house_pipeline(root, house_csv), mlflow_store)


@pytest.fixture(scope="session")
def churn_champion(trained_churn, mlflow_store, tmp_path_factory):
    """The churn model deployed as champion on a kiln-model-server of this session: (config path, tracking URI,
    REST URL, registered name, artifact root), for batch inference and the served-traffic monitor."""
    from serving.target import ServingTarget
    from tests.servers import start_server
    from tests.tasks.test_deploy import DEPLOY, endpoints

    root = tmp_path_factory.mktemp("batch")
    served = root / "serving"
    served.mkdir()
    (served / "models.config").write_text("model_config_list {\n}\n")
    server = start_server(root, f"--model_config_file={served / 'models.config'}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=0", "--prefer_tflite_model=true")
    target = ServingTarget(grpc_address=server.grpc_target, rest_url=server.rest_url,
                           model_base_path=served / "models", config_file=served / "models.config")
    config = root / "pipeline.yaml"
    name = f"churn-batch-{uuid.uuid4().hex[:8]}"
    config.write_text(trained_churn["config"].read_text() + f"registry: {{model_name: {name}}}\n")
    run = resolve(config, root, mlflow_store, endpoints(target), params={"thresholds": {}, "change_thresholds": {},
                                                                         "variants": []})
    run_steps(run, DEPLOY, available=trained_churn)
    try:
        yield {"config": config, "tracking": mlflow_store, "rest": server.rest_url, "model": name,
               "root": root / "artifacts"}
    finally:
        server.stop()
