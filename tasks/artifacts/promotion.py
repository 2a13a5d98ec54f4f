"""`Promotion`: the verified version became champion in MLflow and stable on the server (no files, only
properties): the aliases and labels after the move, and why and by whom it was made."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class PromotionProperties(Properties):
    serving_model_name: str
    version: int
    versions: list[int]  # loaded on the server after the promotion
    labels: dict[str, int]
    mlflow_aliases: dict[str, int]
    why: str  # as written to the alias history
    by: str
    approved_by: str | None = None  # the approver, when the run asked for an approval


class Promotion(ArtifactType[PromotionProperties]):
    KIND = "Promotion"
    Properties = PromotionProperties
