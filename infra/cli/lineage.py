"""`kiln lineage`: from a model version (TF Serving version N is MLflow version N) back to the DAG run,
the data, the schema and the code it came from — through MLflow alone, as an auditor would."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks.errors import BadInputError
from tasks.model_registry import BLESSED_TAG, HISTORY_TAG, MODEL_CARD, quiet_downloads


class LineageError(BadInputError):
    """The version does not exist, or was not registered by kiln."""


def lineage(tracking_uri: str, model: str, version: int) -> dict[str, Any]:
    import mlflow
    from google.protobuf import text_format
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from tensorflow_metadata.proto.v0 import schema_pb2

    quiet_downloads()
    client = MlflowClient(tracking_uri)
    try:
        found = client.get_model_version(model, str(version))
        registered = client.get_registered_model(model)
    except MlflowException:
        raise LineageError(f"no version {version} of registered model {model!r} at {tracking_uri}") from None
    tags = found.tags
    if "kiln.run_id" not in tags:
        raise LineageError(f"{model} v{version} was not registered by kiln (no kiln.run_id tag)")
    parent = client.get_run(tags["kiln.parent_run_id"]) if tags.get("kiln.parent_run_id") else None
    with tempfile.TemporaryDirectory() as folder:
        schema_file = mlflow.artifacts.download_artifacts(run_id=found.run_id, artifact_path=tags["kiln.schema"],
                                                          dst_path=folder, tracking_uri=tracking_uri)
        schema = text_format.Parse(Path(schema_file).read_text(), schema_pb2.Schema())
    history = [entry for entry in json.loads(registered.tags.get(HISTORY_TAG, "[]"))
               if version in (entry.get("from_version"), entry.get("to_version"))]
    return {
        "model": model,
        "version": version,
        "aliases": sorted(alias for alias, v in registered.aliases.items() if int(v) == version),
        "blessed": tags.get(BLESSED_TAG) == "true",
        "artifact_sha256": tags.get("kiln.artifact_sha256"),  # the served folder's digest, as evaluate blessed it
        "served_format": tags.get("kiln.served_format"),
        "failed_check": tags.get("kiln.failed_check"),
        "forced_push_reason": tags.get("kiln.forced_push_reason"),
        "dag_id": tags.get("kiln.dag_id"),
        "dag_run_id": tags["kiln.run_id"],
        "try": tags.get("kiln.try"),
        "mlflow_parent_run": tags.get("kiln.parent_run_id"),
        "mlflow_register_run": found.run_id,
        "parent_run_status": parent.info.status if parent else None,
        "config_path": tags.get("kiln.config_path"),
        "config_sha256": tags.get("kiln.config_sha256"),
        "kiln_commit": tags.get("mlflow.source.git.commit"),
        "run_snapshot": tags.get("kiln.run_snapshot"),
        "data_source": tags.get("kiln.data_source"),
        "data_fingerprint": tags.get("kiln.data_fingerprint"),
        "schema": {"artifact": f"runs:/{found.run_id}/{tags['kiln.schema']}", "origin": tags.get("kiln.schema_origin"),
                   "features": [f.name for f in schema.feature]},
        "model_card": f"runs:/{found.run_id}/{MODEL_CARD}",
        "alias_history": history,
    }
