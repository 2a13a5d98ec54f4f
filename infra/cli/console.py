"""What every `kiln` command shares: its two consoles, the one-line error exit, common options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

out = Console()
err = Console(stderr=True)

Home = Annotated[Path | None, typer.Option("--home", help="state folder (default: $KILN_HOME or ./.kiln)")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON summary object on stdout")]


def say(line: str) -> None:
    """A progress line on stderr, indented under what the command prints."""
    err.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)  # URLs and commands stay copyable


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; raise what this returns."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    return typer.Exit(code)


# MLflow's client retries by itself (urllib3), by default 7 times with a backoff factor of 2 and 120 s per
# request: minutes of silence. The CLI's calls give up after about two minutes, as its Airflow client does.
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_mlflow_retries() -> None:
    """Bounded MLflow retries for this process, unless the shell chose its own. Called by the commands that
    talk to MLflow, after the stack's services were started (they keep MLflow's own defaults)."""
    for name, value in MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
