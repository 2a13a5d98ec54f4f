"""The approval task of a pipeline DAG: Airflow 3.3's Human-in-the-loop `ApprovalOperator` around kiln's
approve step (tasks/steps/approve.py). Only the DAG factory imports this module.

Before it waits, the task asks the step's `question` (run snapshot and artifacts -> subject and Markdown
body: the blessing table and the diff against the champion). When the run promotes without asking
(serving.promotion: auto) the task is skipped and promote, whose trigger rule lets it run past a skipped
approval, promotes at once: the grid shows the approval skipped, never approved by nobody. Otherwise the
task parks in `awaiting_input` (no worker slot, no pool slot) until someone answers in the Airflow UI's
Required Actions, through the REST API (`PATCH .../taskInstances/approve/-1/hitlDetails`) or with `kiln
approve` / `kiln reject`, or until serving.promotion_timeout_minutes have passed: then the scheduler answers
with the default, Reject, and nobody as the responder, which is how a timeout is told from a rejection.

The answer goes to the step's `run` (recorded as an ApprovalDecision; a rejection or a timeout withdraws the
canary). Approve: the task succeeds and promote runs with the decision. Reject or timeout: promote is
skipped, as the ApprovalOperator does, and the run succeeds — not promoted is an outcome.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks.registry import StepSpec

log = logging.getLogger(__name__)

COMMENT = "comment"


def answer_of(response: dict[str, Any]) -> dict[str, Any]:
    """The approve step's answer arguments (decision, by, comment, at) from the HITL operator's response.

    A response without a responder is the scheduler applying the default (Reject) when nobody answered in
    time: a timeout, not a rejection."""
    chosen = response["chosen_options"]
    user = response.get("responded_by_user")
    if chosen == [ApprovalOperator.APPROVE]:
        decision = "approved"
    elif user is None:
        decision = "timed_out"
    else:
        decision = "rejected"
    at = response["responded_at"]
    comment = (response.get("params_input") or {}).get(COMMENT)
    return {"decision": decision, "by": user["name"] if user else None,
            "comment": (comment or "").strip() if decision != "timed_out" else "",
            "at": at.isoformat(timespec="seconds") if isinstance(at, datetime) else str(at)}


class PipelineApproval(ApprovalOperator):
    """A registry step of role `approval`, waiting on a person. XComs: `approval` (the ApprovalDecision URI)."""

    # run and inputs are XComArgs of the steps before: rendering resolves them (and makes them upstream).
    template_fields = (*ApprovalOperator.template_fields, "run", "inputs")

    def __init__(self, *, spec: StepSpec, run: Any, inputs: dict[str, Any], **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params, merged in by Airflow; the form asks only a comment
        super().__init__(
            task_id=spec.name,
            doc_md=spec.description,
            subject=f"{spec.name}: asked when the run reaches it",  # replaced by the step's question
            defaults=ApprovalOperator.REJECT,  # what a timeout answers
            params={COMMENT: Param(None, type=["null", "string"], title="Comment",
                                   description="why: goes into the MLflow alias history with your name")},
            multiple_outputs=True,
            **kwargs,
        )
        self.run = run
        self.inputs = inputs

    def execute(self, context: Any) -> Any:
        from tasks.step_runner import StepRejected, StepSkipped, ask, recorded_outputs

        recorded = recorded_outputs(self.task_id, self.run)
        if recorded is not None:
            # A retry after the answer was recorded (and acted on: a rejected canary is already withdrawn). Airflow
            # 3.3 can fail a resumed HITL task when the executor's late "success" for its paused first half arrives
            # while the second half runs; asking again would wait for an answer already given.
            log.warning("%s: the answer was recorded by an earlier try; not asking again", self.task_id)
            return self._finish(context["ti"], recorded)
        try:
            asked = ask(self.task_id, self.run, self.inputs)
        except StepSkipped as exc:
            raise AirflowSkipException(str(exc)) from None
        except StepRejected as exc:
            raise AirflowFailException(str(exc)) from None
        self.subject, self.body = asked.subject, asked.body
        self.response_timeout = timedelta(minutes=asked.timeout_minutes)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from tasks.step_runner import StepRejected, run_step

        # The HITL base validates the answer (options, the comment form); the skipping is done below, once the
        # answer is recorded, instead of by ApprovalOperator's own execute_complete.
        response = HITLOperator.execute_complete(self, context=context, event=event)
        answer = answer_of(response)
        ti = context["ti"]
        try:
            outputs = run_step(self.task_id, self.run, ti.try_number, self.inputs, **answer)
        except StepRejected as exc:
            raise AirflowFailException(str(exc)) from None
        return self._finish(ti, outputs)

    def _finish(self, ti: Any, outputs: dict[str, str]) -> Any:
        """Approved: the outputs are the task's XComs and promote runs. Otherwise promote is skipped."""
        from tasks.artifacts.approval import ApprovalDecision

        if ApprovalDecision.read(outputs["approval"]).properties.decision == "approved":
            return outputs
        # skip() ends the task before a return value would be pushed: push the outputs now.
        for name, uri in outputs.items():
            ti.xcom_push(key=name, value=uri)
        ti.xcom_push(key="return_value", value=outputs)
        self.skip(ti=ti, tasks=[t for t in self.get_direct_relatives(upstream=False) if not t.is_teardown])
        return None
