"""Transform: TFT's analyze phase without TFT — per-feature mean and variance over the train split.

The apply phase lives inside the model (a Normalization layer built from these numbers), so the
server receives raw pixels and training and serving cannot skew.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec
import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2

from tasks import ingest
from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.errors import BadInputError
from tasks.validate import read_schema

log = logging.getLogger(__name__)

KIND = "TransformGraph"
STATS_FILE = "normalization.json"


class TransformError(BadInputError):
    """The examples cannot be analyzed; one line naming the column at fault."""


def run(config: PipelineConfig, ctx: StepContext, examples: str, schema: str) -> dict[str, str]:
    columns = read_artifact(examples, ingest.KIND).properties["feature_columns"]
    schema_proto = read_schema(schema)
    types = {f.name: f.type for f in schema_proto.feature}
    for column in columns:
        if types.get(column) not in (schema_pb2.FLOAT, schema_pb2.INT):
            raise TransformError(f"{examples}: feature column {column!r} is not numeric in the schema")
    features, _ = ingest.load_split(examples, "train")
    # float64 accumulation: float32 sums drift on large splits.
    mean = features.astype(np.float64).mean(axis=0)
    variance = features.astype(np.float64).var(axis=0)
    out_uri = ctx.output_uri("transform", "transform")
    stats = {"feature_columns": columns, "mean": mean.tolist(), "variance": variance.tolist(),
             "num_examples": int(features.shape[0])}
    with publish_artifact(out_uri, KIND, {"num_features": len(columns), "num_examples": stats["num_examples"]}) as staging:
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=1))
    log.info("transform: mean/variance of %d features over %d train examples -> %s",
             len(columns), features.shape[0], out_uri)
    return {"transform": out_uri}


def load_normalization(transform_uri: str) -> dict[str, Any]:
    """{"feature_columns", "mean", "variance", "num_examples"} as written by `run`."""
    with fsspec.open(read_artifact(transform_uri, KIND).path(STATS_FILE), "r") as fh:
        return json.load(fh)
