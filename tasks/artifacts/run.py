"""`RunSnapshot`: one DAG run resolved at trigger time — the config after overrides, where artifacts go,
which MLflow and which TF Serving — plus copies of the user's model module and curated schema, so every
step (on any machine) runs exactly what was resolved. Steps read this, never the environment.
"""

from __future__ import annotations

from typing import Any

from tasks.artifacts.base import ArtifactType, Properties
from tasks.context import ServingEndpoints

USER_MODEL_DIR = "user_model"
SCHEMA_FILE = "schema.pbtxt"


class RunProperties(Properties):
    pipeline: str
    run_id: str
    config_path: str  # the YAML the run was resolved from
    config_sha256: str
    overrides: dict[str, Any]  # DAG params that changed the YAML's values
    config: dict[str, Any]  # the resolved PipelineConfig (paths point into this snapshot)
    artifact_root: str
    tracking_uri: str | None
    serving: ServingEndpoints | None
    kiln_commit: str | None
    resolved_at: str


class RunSnapshot(ArtifactType[RunProperties]):
    KIND = "RunSnapshot"
    Properties = RunProperties
