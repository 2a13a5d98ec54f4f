"""`ServingVerification`: the served version is the folder evaluate blessed (same digest), answered like it,
and was promoted."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class VerificationProperties(Properties):
    serving_model_name: str
    served_version: int
    versions: list[int]
    labels: dict[str, int]
    examples: int
    max_relative_diff: float  # |served - in-process| / max(1, |in-process|), over every numeric output
    batch_latency_ms: float
    mlflow_aliases: dict[str, int]
    artifact_sha256: str = ""  # recomputed from the server's version folder


class ServingVerification(ArtifactType[VerificationProperties]):
    KIND = "ServingVerification"
    Properties = VerificationProperties
