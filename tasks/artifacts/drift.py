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


class TrafficDrift(Properties):
    """The champion's served traffic (its request logs) in this window: skew against its training statistics and
    drift against the previous window."""

    version: int
    requests: int = 0
    files: int = 0
    skew: list[FeatureDrift] = []
    drift: list[FeatureDrift] = []
    note: str = ""

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in (*self.skew, *self.drift))


class DriftProperties(Properties):
    pipeline: str
    source: str
    span: int | None
    baseline: str  # what the span was compared with: the champion version and its training statistics
    champion_version: int | None
    features: list[FeatureDrift] = []
    drifted: bool = False
    note: str = ""  # why nothing was compared (no champion yet)
    traffic: TrafficDrift | None = None  # served traffic, when serving.request_log is on

    @property
    def drifted_features(self) -> list[str]:
        served = ([f"served skew: {f.feature}" for f in self.traffic.skew if f.drifted]
                  + [f"served drift: {f.feature}" for f in self.traffic.drift if f.drifted]) if self.traffic else []
        return [f.feature for f in self.features if f.drifted] + served


class DriftReport(ArtifactType[DriftProperties]):
    KIND = "DriftReport"
    Properties = DriftProperties
