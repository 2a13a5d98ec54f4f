"""`RunSnapshot`: one DAG run resolved at trigger time — the config after overrides, where artifacts go,
which MLflow and which TF Serving — plus copies of the user's model module and curated schema, so every
step (on any machine) runs exactly what was resolved. Steps read this, never the environment.
"""

from __future__ import annotations

from typing import Any

from tasks.artifacts.base import ArtifactType, Properties
from tasks.context import ServingEndpoints, StepContext

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

    def context(self, try_number: int = 1) -> StepContext:
        props = self.properties
        lineage = {"kiln.config_path": props.config_path, "kiln.config_sha256": props.config_sha256,
                   "kiln.run_snapshot": self.uri, "kiln.dag_id": f"kiln_{props.pipeline}"}
        if props.kiln_commit:
            lineage["mlflow.source.git.commit"] = props.kiln_commit
        return StepContext(artifact_root=props.artifact_root, pipeline=props.pipeline, run_id=props.run_id,
                           try_number=try_number, tracking_uri=props.tracking_uri, serving=props.serving,
                           lineage=lineage)
