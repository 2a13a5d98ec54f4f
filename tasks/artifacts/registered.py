"""`RegisteredModel`: the MLflow model version this run registered, and the version folder TF Serving will
load (`tf_serving/`, the same files as the version's `tf_serving/` in MLflow)."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties

VERSION_FOLDER = "tf_serving"


class RegisteredProperties(Properties):
    model_name: str
    version: int
    mlflow_run_id: str
    model_uri: str
    serving_artifact_uri: str
    blessed: bool


class RegisteredModel(ArtifactType[RegisteredProperties]):
    KIND = "RegisteredModel"
    Properties = RegisteredProperties

    @property
    def version_folder(self) -> str:
        return self.path(VERSION_FOLDER)
