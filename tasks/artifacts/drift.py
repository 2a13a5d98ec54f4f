"""`DriftReport`: one check of the newest span against the champion's training statistics (the
monitor's output; `report.md` holds the table shown in the task log and in MLflow)."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties

REPORT_MD = "report.md"


class FeatureDrift(Properties):
    feature: str
    kind: str  # numeric (Jensen-Shannon distance) or categorical (L-infinity distance)
    distance: float | None  # None: not comparable (the note says why)
    threshold: float
    drifted: bool
    note: str = ""


class DriftProperties(Properties):
    pipeline: str
    source: str
    span: int | None
    baseline: str  # what the span was compared with: the champion version and its training statistics
    champion_version: int | None
    features: list[FeatureDrift] = []
    drifted: bool = False
    note: str = ""  # why nothing was compared (no champion yet)

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]


class DriftReport(ArtifactType[DriftProperties]):
    KIND = "DriftReport"
    Properties = DriftProperties
