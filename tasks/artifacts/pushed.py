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
    saved_model: str  # the SavedModel that was shipped (verify compares the server with it)


class PushedModel(ArtifactType[PushedProperties]):
    KIND = "PushedModel"
    Properties = PushedProperties
