"""What the approval task hands kiln's approve step, from the answer Airflow's Human-in-the-loop operator
resumes with: a person's Approve or Reject (their name, their comment), or the scheduler's default when
nobody answered in time (Reject, and no responder): a timeout, not a rejection."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.airflow.approval import answer_of

AT = datetime(2026, 11, 30, 10, 0, 5, 123456, tzinfo=UTC)
ALICE = {"id": "alice", "name": "alice"}


@pytest.mark.parametrize("chosen, user, comment, expected", [
    (["Approve"], ALICE, "  ticket 7 ", {"decision": "approved", "by": "alice", "comment": "ticket 7"}),
    (["Reject"], ALICE, "latency", {"decision": "rejected", "by": "alice", "comment": "latency"}),
    (["Approve"], ALICE, None, {"decision": "approved", "by": "alice", "comment": ""}),
    (["Reject"], None, None, {"decision": "timed_out", "by": None, "comment": ""}),
], ids=["approved", "rejected", "approved without a comment", "timed out"])
def test_the_answer_is_the_decision_who_gave_it_and_why(chosen, user, comment, expected):
    response = {"chosen_options": chosen, "params_input": {"comment": comment}, "responded_at": AT,
                "responded_by_user": user}
    assert answer_of(response) == {**expected, "at": "2026-11-30T10:00:05+00:00"}
