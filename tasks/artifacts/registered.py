"""`RegisteredModel`: the MLflow model version this run registered (no files, only properties)."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class RegisteredProperties(Properties):
    model_name: str
    version: int
    mlflow_run_id: str
    model_uri: str
    serving_artifact_uri: str
    alias: str | None  # challenger when blessed; an unblessed version gets no alias
    blessed: bool


class RegisteredModel(ArtifactType[RegisteredProperties]):
    KIND = "RegisteredModel"
    Properties = RegisteredProperties
