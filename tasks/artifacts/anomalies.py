"""`ExampleAnomalies`: TFDV's Anomalies per split (`Split-{split}/SchemaDiff.pbtxt`)."""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import anomalies_pb2

from tasks.artifacts.base import ArtifactType, Properties, read_text_proto

ANOMALIES_FILE = "SchemaDiff.pbtxt"


class AnomaliesProperties(Properties):
    num_anomalies: int
    by_split: dict[str, list[str]]  # split -> features with an anomaly
    descriptions: list[str] = []
    warnings: list[str] = []  # what does not stop the run: rows ingest skipped within data.max_bad_rows


class ExampleAnomalies(ArtifactType[AnomaliesProperties]):
    KIND = "ExampleAnomalies"
    Properties = AnomaliesProperties

    @staticmethod
    def relative_path(split: str) -> str:
        return f"Split-{split}/{ANOMALIES_FILE}"

    def anomalies(self, split: str) -> anomalies_pb2.Anomalies:
        return read_text_proto(self.path(self.relative_path(split)), anomalies_pb2.Anomalies())
