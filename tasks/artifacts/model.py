"""`Model`: the trained model as a SavedModel whose `serving_default` is the serving contract.

Layout: `saved_model/` (what TF Serving loads), `metrics.jsonl` (one line per epoch) and
`training_curves.png`. The
properties carry the served features and label (the contract a client and the later steps need).
"""

from __future__ import annotations

from typing import Any

from tasks.artifacts.base import ArtifactType, Properties
from tasks.features import Preprocessing

SAVED_MODEL_DIR = "saved_model"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"


class ModelProperties(Properties):
    preprocessing: Preprocessing
    model: str  # train.model as resolved
    hparams: dict[str, Any]
    num_workers: int
    epochs: int
    data_fingerprint: str
    mlflow_run_id: str | None = None
    train_seconds: float = 0.0
    final_metrics: dict[str, float] = {}
    restarts: int = 0  # worker-group restarts after a worker died
    resumed_from_epoch: int = 0  # epochs finished before the last start of the group (0: none)
    learning_rate: float | None = None  # as trained (the best trial's when tuned)
    batch_size: int | None = None
    tuning: dict[str, Any] | None = None  # the study's summary when tuned (tasks.tuning.Outcome.summary)


class Model(ArtifactType[ModelProperties]):
    KIND = "Model"
    Properties = ModelProperties

    @property
    def saved_model(self) -> str:
        return self.path(SAVED_MODEL_DIR)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.properties.preprocessing
