"""`Schema`: the schema a run validated its data against (`schema.pbtxt`), curated or inferred."""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2

from tasks.artifacts.base import ArtifactType, Properties
from tasks.schema import load_schema

SCHEMA_FILE = "schema.pbtxt"


class SchemaProperties(Properties):
    origin: str  # the curated file's path, or how it was inferred
    curated: bool
    num_features: int


class Schema(ArtifactType[SchemaProperties]):
    KIND = "Schema"
    Properties = SchemaProperties

    def schema(self) -> schema_pb2.Schema:
        return load_schema(self.path(SCHEMA_FILE))
