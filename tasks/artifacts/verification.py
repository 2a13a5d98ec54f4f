"""`ServingVerification`: the version served as canary is the folder evaluate blessed (same digest) and answers
like it in-process; promote reads it."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class VerificationProperties(Properties):
    serving_model_name: str
    served_version: int
    versions: list[int]  # loaded on the server when it was verified
    labels: dict[str, int]
    examples: int
    max_relative_diff: float  # |served - in-process| / max(1, |in-process|), over every numeric output
    batch_latency_ms: float
    artifact_sha256: str = ""  # recomputed from the server's version folder


class ServingVerification(ArtifactType[VerificationProperties]):
    KIND = "ServingVerification"
    Properties = VerificationProperties
