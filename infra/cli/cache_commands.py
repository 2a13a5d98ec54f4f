"""`kiln cache ls|prune PIPELINE`: the step cache's index (tasks.cache), listed or pruned."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from infra.cli.console import Home, fail, out
from infra.stack.layout import kiln_home

cache_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="The step cache: which outputs later runs may reuse.")
Pipeline = Annotated[str, typer.Argument(help="the pipeline's name (its YAML's `pipeline:`)")]
ArtifactRoot = Annotated[str | None, typer.Option("--artifact-root", help="where the runs' artifacts are (default: "
                                                  "$KILN_ARTIFACT_ROOT, else the stack's <home>/artifacts)")]


def _root(artifact_root: str | None, home: Home) -> str:
    return artifact_root or os.environ.get("KILN_ARTIFACT_ROOT") or str(kiln_home(home) / "artifacts")


@cache_app.command("ls")
def list_entries(pipeline: Pipeline, artifact_root: ArtifactRoot = None, home: Home = None) -> None:
    """Each cached step output set: its step, key, run, age and whether its outputs are still there."""
    from tasks.cache import entries

    table = Table(title=f"step cache of {pipeline}")
    for column in ("step", "key", "run", "age", "outputs"):
        table.add_column(column)
    now = datetime.now(UTC)
    for entry in entries(_root(artifact_root, home), pipeline):
        age = now - entry.created
        table.add_row(entry.step, entry.key[:16], entry.run_id, f"{age.days}d {age.seconds // 3600}h",
                      "present" if entry.present else "gone")
    out.print(table)


@cache_app.command("prune")
def prune_entries(pipeline: Pipeline, older_than: Annotated[str | None, typer.Option(
        "--older-than", help="also remove entries older than this, e.g. 7d, 12h (s, m, h, d, w)")] = None,
        artifact_root: ArtifactRoot = None, home: Home = None) -> None:
    """Remove the entries whose outputs are gone (or older than --older-than); the outputs are not touched."""
    from tasks.cache import max_age, prune

    try:
        age = max_age(older_than)
    except ValueError as exc:
        raise fail(f"--older-than: {exc}") from None
    removed = prune(_root(artifact_root, home), pipeline, age)
    for entry in removed:
        out.print(f"removed {entry.step} {entry.key[:16]} (run {entry.run_id})", highlight=False, markup=False)
    out.print(f"{len(removed)} entries removed", highlight=False, markup=False)
