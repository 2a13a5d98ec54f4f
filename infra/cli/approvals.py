"""`kiln approve` and `kiln reject`: answer a pipeline run's pending approval (serving.promotion: approval)
through Airflow's REST API, as the Required Actions page of the UI does.

Each refusal is one line: no run is waiting, the approval was already answered (by whom, when: it is answered
once), the run has finished, or the run is not at its approval (yet, or it promoted without asking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.cli.airflow_api import FINISHED, AirflowApiError, AirflowClient, AlreadyAnswered
from tasks.errors import BadInputError
from tasks.registry import STEPS

APPROVAL_STEP = next(spec.name for spec in STEPS if spec.role == "approval")
# The options of Airflow's ApprovalOperator (airflow.providers.standard.operators.hitl), not imported here: the
# CLI does not load Airflow's providers.
APPROVE, REJECT = "Approve", "Reject"


class ApprovalError(BadInputError):
    """The approval cannot be answered as asked; nothing was changed."""


@dataclass(frozen=True)
class Answered:
    dag_id: str
    run_id: str
    approved: bool
    by: str
    comment: str


def answer_approval(client: AirflowClient, dag_id: str, run_id: str | None, approve: bool,
                    comment: str | None) -> Answered:
    """Answer the approval of `run_id` (default: the run of `dag_id` that is waiting for one)."""
    if run_id is None:
        waiting = client.waiting_for_input(dag_id, APPROVAL_STEP)
        if not waiting:
            raise ApprovalError(f"no run of {dag_id} is waiting for an approval")
        run_id = waiting[0]["task_instance"]["dag_run_id"]
    run = _dag_run(client, dag_id, run_id)
    detail = client.hitl_detail(dag_id, run_id, APPROVAL_STEP)
    if detail is not None and detail["response_received"]:
        raise ApprovalError(already_answered(dag_id, run_id, detail))
    if run["state"] in FINISHED:
        raise ApprovalError(f"run {run_id} of {dag_id} has finished ({run['state']}): there is no approval to "
                            f"answer")
    state = (detail or {}).get("task_instance", {}).get("state")
    if detail is None or state != "awaiting_input":
        raise ApprovalError(f"run {run_id} of {dag_id} is not waiting for an approval ({APPROVAL_STEP} is "
                            f"{state or _task_state(client, dag_id, run_id)})")
    try:
        answer = client.answer_hitl(dag_id, run_id, APPROVAL_STEP, APPROVE if approve else REJECT,
                                    {"comment": comment or None})
    except AlreadyAnswered as exc:  # someone else answered between the read and the write
        raise ApprovalError(already_answered(dag_id, run_id, exc.detail)) from None
    return Answered(dag_id, run_id, approve, (answer.get("responded_by") or {}).get("name", "?"), comment or "")


def already_answered(dag_id: str, run_id: str, detail: dict[str, Any]) -> str:
    """One line: how the approval was answered, by whom, when."""
    user = detail.get("responded_by_user")
    when = str(detail.get("responded_at") or "")[:19].replace("T", " ")
    if user is None:  # the scheduler applied the default when nobody answered in time
        return f"the approval of run {run_id} of {dag_id} timed out at {when} UTC: it can no longer be answered"
    chosen = "approved" if detail.get("chosen_options") == [APPROVE] else "rejected"
    comment = (detail.get("params_input") or {}).get("comment")
    said = f" ({comment})" if comment else ""
    return f"the approval of run {run_id} of {dag_id} was already answered: {chosen} by {user['name']} at {when} UTC{said}"


def _dag_run(client: AirflowClient, dag_id: str, run_id: str) -> dict[str, Any]:
    try:
        return client.dag_run(dag_id, run_id)
    except AirflowApiError as exc:
        if "HTTP 404" in str(exc):
            raise ApprovalError(f"{dag_id} has no run {run_id}") from None
        raise


def _task_state(client: AirflowClient, dag_id: str, run_id: str) -> str:
    state = next((t.state for t in client.task_states(dag_id, run_id) if t.task_id == APPROVAL_STEP), None)
    return state or "not started"
