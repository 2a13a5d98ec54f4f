"""`kiln approve` and `kiln reject`: answer the approval a pipeline run waits for (serving.promotion: approval),
as the Airflow UI's Required Actions page does. The answer, with the comment, is recorded by the run itself:
in the MLflow alias history and its summary."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli.console import Home, fail, out
from infra.stack.layout import StackError, kiln_home
from infra.stack.stack import Stack

Pipeline = Annotated[str, typer.Argument(help="the pipeline's name (its DAG is kiln_<pipeline>)")]
RunId = Annotated[str | None, typer.Argument(help="the DAG run (default: the run waiting for an approval)")]
Comment = Annotated[str | None, typer.Option("--comment", "-m", help="why: goes into the MLflow alias history")]


def approve(pipeline: Pipeline, run_id: RunId = None, comment: Comment = None, home: Home = None) -> None:
    """Approve the verified canary of a run: it becomes champion, served as stable."""
    _answer(pipeline, run_id, True, comment, home)


def reject(pipeline: Pipeline, run_id: RunId = None, comment: Comment = None, home: Home = None) -> None:
    """Reject the verified canary of a run: it is withdrawn, stable stays as it is."""
    _answer(pipeline, run_id, False, comment, home)


def _answer(pipeline: str, run_id: str | None, approved: bool, comment: str | None, home: Home) -> None:
    from infra.cli.airflow_api import AirflowApiError
    from infra.cli.approvals import ApprovalError, answer_approval
    from infra.cli.runner import airflow_client

    try:
        client = airflow_client(Stack.load(kiln_home(home)))
        answered = answer_approval(client, f"kiln_{pipeline}", run_id, approved, comment)
    except (StackError, ApprovalError) as exc:
        raise fail(str(exc)) from None
    except AirflowApiError as exc:
        raise fail(str(exc), code=1) from None
    outcome = "approved: promote makes it champion and stable" if approved else \
        "rejected: the canary is withdrawn, stable stays as it is"
    out.print(f"run {answered.run_id} of {answered.dag_id} {outcome} (answered as {answered.by})", highlight=False,
              markup=False)


def register(app: typer.Typer) -> None:
    for command in (approve, reject):
        app.command()(command)
