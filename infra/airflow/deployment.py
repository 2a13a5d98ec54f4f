"""The kiln installation a DAG runs in, read from the environment its Airflow workers were given.

Only the DAG's first task (resolve) calls this; it freezes the result into the run snapshot, so no
step ever reads these variables. `kiln up` sets them for the embedded stack; a fleet sets them in its
worker environment (Helm values, compose env file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from infra import DEFAULT_HOME
from tasks.context import ServingEndpoints
from tasks.snapshot import Deployment

TUNING_STORAGE_VARIABLE = "KILN_TUNING_STORAGE"  # the study database of tune sections without tune.storage
SERVING_VARIABLES = {"rest_url": "KILN_SERVING_REST", "grpc_address": "KILN_SERVING_GRPC",
                     "model_base_path": "KILN_SERVING_MODELS", "config_file": "KILN_SERVING_CONFIG"}


def deployment_from_env(env: Mapping[str, str] | None = None) -> Deployment:
    """From these variables (default: this process's environment)."""
    env = os.environ if env is None else env
    home = Path(env.get("KILN_HOME") or DEFAULT_HOME)
    serving = {field: env.get(name, "").strip() for field, name in SERVING_VARIABLES.items()}
    return Deployment(
        artifact_root=env.get("KILN_ARTIFACT_ROOT") or str(home / "artifacts"),
        tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
        serving=ServingEndpoints(**serving) if all(serving.values()) else None,
        tuning_storage=env.get(TUNING_STORAGE_VARIABLE) or None,
    )
