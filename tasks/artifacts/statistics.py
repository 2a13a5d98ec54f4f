"""`ExampleStatistics`: TFDV's DatasetFeatureStatisticsList per split (`Split-{split}/FeatureStats.pbtxt`)."""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import statistics_pb2

from tasks.artifacts.base import ArtifactType, Properties, read_text_proto

STATS_FILE = "FeatureStats.pbtxt"


class StatisticsProperties(Properties):
    num_examples: dict[str, int]


class ExampleStatistics(ArtifactType[StatisticsProperties]):
    KIND = "ExampleStatistics"
    Properties = StatisticsProperties

    @staticmethod
    def relative_path(split: str) -> str:
        return f"Split-{split}/{STATS_FILE}"

    def statistics(self, split: str) -> statistics_pb2.DatasetFeatureStatisticsList:
        return read_text_proto(self.path(self.relative_path(split)), statistics_pb2.DatasetFeatureStatisticsList())
