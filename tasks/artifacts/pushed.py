"""`PushedModel`: the version loaded on TF Serving, labelled canary (no files, only properties)."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class PushedProperties(Properties):
    serving_model_name: str
    version: int
    version_dir: str
    versions: list[int]
    labels: dict[str, int]
    rest_url: str
    grpc_address: str
    forced_reason: str | None = None  # pushed although not blessed, and why
    artifact_sha256: str  # the digest of the folder shipped: evaluate's (verify checks the server's against it)
    artifact_format: str  # saved_model or tflite


class PushedModel(ArtifactType[PushedProperties]):
    KIND = "PushedModel"
    Properties = PushedProperties
