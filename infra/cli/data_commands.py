"""`kiln data add`: new data for a pipeline, as the next span, announced to Airflow as an asset event."""

from __future__ import annotations

import getpass
import json
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from infra.cli.airflow_api import AirflowApiError
from infra.cli.console import AsJson, Home, err, fail
from infra.stack.layout import StackError, kiln_home
from infra.stack.stack import Stack
from tasks.config import ON_DRIFT, ON_NEW_DATA, PipelineConfig, load_config
from tasks.errors import BadInputError

data_app = typer.Typer(no_args_is_help=True, add_completion=False, help="New data for a pipeline.")


def _say(line: str) -> None:
    err.print(f"  {line}", highlight=False, markup=False)


@data_app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="the CSV to add (the pipeline's columns, header row)")],
    pipeline: Annotated[str, typer.Option("--pipeline", help="pipeline name, or the path of its YAML")],
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """Check FILE against the pipeline's schema, copy it in as the next span, post an asset event."""
    from infra.cli.data_add import add_span
    from infra.cli.runner import airflow_client, wait_until_parsed

    home_path = kiln_home(home)
    os.environ["KILN_HOME"] = str(home_path)  # the YAMLs may say ${KILN_HOME}
    try:
        stack = Stack.load(home_path)
        config_path, config = _pipeline(home_path, pipeline)
        client = airflow_client(stack, report=_say)
        dag_id = f"kiln_{config.pipeline}"
        wait_until_parsed(client, dag_id, config_path)  # the DAG declares the asset the event goes to
        asset = client.asset(f"kiln_{config.pipeline}_data")
        if asset is None:
            raise fail(f"Airflow knows no asset kiln_{config.pipeline}_data; is data.source spanned "
                       f"({config.data.source})? Nothing was copied")
        added = add_span(config, file)
        # Unpaused before the event: a paused DAG would not run on it.
        if config.schedule in (ON_NEW_DATA, ON_DRIFT):
            client.unpause(dag_id)
        if client.dag(f"kiln_monitor_{config.pipeline}") is not None:
            client.unpause(f"kiln_monitor_{config.pipeline}")
        event = client.post_asset_event(asset["id"], {
            "span": added.span, "file": str(added.path), "rows": added.rows,
            "added_by": f"kiln data add by {getpass.getuser()}@{socket.gethostname()}"})
    except (BadInputError, StackError) as exc:
        raise fail(str(exc)) from None
    except AirflowApiError as exc:
        raise fail(str(exc), code=1) from None
    result = {"pipeline": config.pipeline, "span": added.span, "path": str(added.path), "rows": added.rows,
              "asset": asset["name"], "asset_uri": asset["uri"], "event_id": event.get("id"),
              "schedule": config.schedule}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    then = {ON_NEW_DATA: f"{dag_id} retrains on it", ON_DRIFT: f"kiln_monitor_{config.pipeline} checks it for "
            f"drift and retrains {dag_id} only if it drifted"}.get(config.schedule, f"the drift monitor checks it; "
                                                                                f"{dag_id} runs on its own schedule")
    err.print(f"span {added.span} of {config.pipeline}: {added.path} ({added.rows:,} rows); asset event posted "
              f"to {asset['name']}; {then}", highlight=False, markup=False)


def _pipeline(home: Path, pipeline: str) -> tuple[Path, PipelineConfig]:
    """A registered or shipped pipeline by name, or a YAML path (registered with the stack here)."""
    from infra.airflow.pipelines import discover, register

    if pipeline.endswith((".yaml", ".yml")) or os.sep in pipeline:
        path = Path(pipeline).resolve()
        config = load_config(path)
        register(home, config.pipeline, path)
        return path, config
    paths = discover(home)
    if pipeline not in paths:
        raise BadInputError(f"--pipeline {pipeline!r}: no such pipeline; pipelines are {', '.join(paths) or 'none'} "
                            f"(or give the YAML's path)")
    return paths[pipeline], load_config(paths[pipeline])
