"""`kiln promote`, `kiln rollback` and `kiln sync`: serving follows the MLflow aliases, moved by an operator.

Each prints what serves before and after (the aliases, and the server's own report of its labels and
loaded versions). MLflow and TF Serving are the running stack's, unless this shell has the deployment's
variables (MLFLOW_TRACKING_URI and KILN_SERVING_*: a fleet's operator) or the pipeline names its own.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from typing import Annotated, Any

import typer
from rich.table import Table

from infra.cli.console import AsJson, Home, bound_mlflow_retries, fail, out
from infra.stack.layout import StackError, kiln_home
from infra.stack.stack import Stack
from tasks.config import PipelineConfig, load_config
from tasks.errors import BadInputError
from tasks.model_registry import CHALLENGER, CHAMPION, PREVIOUS

Pipeline = Annotated[str, typer.Argument(help="the pipeline's name (see `kiln status`)")]
Reason = Annotated[str | None, typer.Option("--reason", help="why, for the alias history")]


def promote(pipeline: Pipeline,
            version: Annotated[int, typer.Argument(help="the MLflow version to make champion", min=1)],
            reason: Reason = None, as_json: AsJson = False, home: Home = None) -> None:
    """Make VERSION the champion (served as stable); the old champion stays loaded as previous-champion."""
    from infra.cli.serving_ops import promote_version

    _run(pipeline, home, as_json, lambda serving: promote_version(serving, version, reason, _operator("promote")))


def rollback(pipeline: Pipeline, reason: Reason = None, as_json: AsJson = False, home: Home = None) -> None:
    """Swap champion and previous-champion and serve accordingly; a second rollback undoes the first."""
    from infra.cli.serving_ops import rollback_champion

    _run(pipeline, home, as_json, lambda serving: rollback_champion(serving, reason, _operator("rollback")))


def sync(pipeline: Pipeline, as_json: AsJson = False, home: Home = None) -> None:
    """Bring TF Serving to what the pipeline's MLflow aliases say now (what kiln_serving_sync does)."""
    from infra.cli.serving_ops import sync_pipeline
    from tasks.serving_sync import AliasChange

    def synced(serving: Any) -> AliasChange:
        result = sync_pipeline(serving)
        return AliasChange(result.aliases, result)

    _run(pipeline, home, as_json, synced)


def _run(pipeline: str, home: Any, as_json: bool, change: Any) -> None:
    import httpx
    from mlflow.exceptions import MlflowException

    from serving.client import ServingClientError
    from serving.deployer import DeployError
    from tasks.model_registry import RegistryError
    from tasks.serving_sync import SyncError

    bound_mlflow_retries()
    try:
        serving = _serving(pipeline, kiln_home(home))
        done = change(serving)
    except (BadInputError, StackError, RegistryError) as exc:
        raise fail(str(exc)) from None
    except (SyncError, DeployError, ServingClientError) as exc:
        raise fail(f"{str(exc).splitlines()[0]} (the MLflow aliases were put back)", code=1) from None
    except (MlflowException, httpx.HTTPError, OSError) as exc:  # a service that does not answer: one line
        lines = str(exc).strip().splitlines()
        raise fail(f"{type(exc).__name__}: {lines[0] if lines else ''}", code=1) from None
    before, after = done.sync.before, done.sync.after
    if as_json:
        print(json.dumps({"pipeline": pipeline, "aliases_before": done.before,
                          "aliases_after": done.sync.aliases, "materialized": done.sync.materialized,
                          "served_before": _served(before), "served_after": _served(after)}, indent=2))
        return
    table = Table(title=f"{serving.registered_model} -> {serving.served_model} on {serving.target.rest_url}")
    for column in ("", "before", "after"):
        table.add_column(column)
    for alias in (CHAMPION, PREVIOUS, CHALLENGER):
        table.add_row(f"MLflow @{alias}", _v(done.before.get(alias)), _v(done.sync.aliases.get(alias)))
    for label in ("stable", "canary"):
        table.add_row(f"served label {label}", _v(before.labels.get(label)), _v(after.labels.get(label)))
    table.add_row("loaded versions", _vs(before.versions), _vs(after.versions))
    out.print(table)


def _serving(pipeline: str, home: Any) -> Any:
    from infra.airflow.deployment import deployment_from_env
    from infra.airflow.pipelines import discover
    from infra.cli.serving_ops import PipelineServing

    os.environ["KILN_HOME"] = str(home)  # the pipeline YAMLs may say ${KILN_HOME}, as for `kiln run`
    paths = discover(home)
    if pipeline not in paths:
        raise BadInputError(f"no pipeline {pipeline!r}; pipelines are {', '.join(paths) or 'none'}")
    config: PipelineConfig = load_config(paths[pipeline])
    env = os.environ if os.environ.get("KILN_SERVING_REST") else Stack.load(home).env()
    return PipelineServing.of(config, deployment_from_env(env))


def _operator(command: str) -> str:
    return f"kiln {command} by {getpass.getuser()}@{socket.gethostname()}"


def _served(served: Any) -> dict[str, Any]:
    return {"versions": list(served.versions), "labels": served.labels}


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _vs(versions: Any) -> str:
    return ", ".join(f"v{v}" for v in versions) or "none"


def register(app: typer.Typer) -> None:
    for command in (promote, rollback, sync):
        app.command()(command)
