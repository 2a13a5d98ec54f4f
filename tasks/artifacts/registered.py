"""`RegisteredModel`: the MLflow model version this run registered; its `tf_serving/` artifact is optimize's
version folder, the one evaluate blessed (its digest is `artifact_sha256`, also the version's
`kiln.artifact_sha256` tag)."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class RegisteredProperties(Properties):
    model_name: str
    version: int
    mlflow_run_id: str
    model_uri: str
    serving_artifact_uri: str
    blessed: bool
    artifact_sha256: str = ""


class RegisteredModel(ArtifactType[RegisteredProperties]):
    KIND = "RegisteredModel"
    Properties = RegisteredProperties
