"""Errors that mean "the input is wrong", as opposed to "something broke".

A step raises a subclass with a one-line message naming the file, column or field at fault. The
DAG fails such a task without retrying (a retry cannot fix bad data), and the CLI prints the line
without a traceback.
"""


class BadInputError(ValueError):
    """Bad data, a bad config or a model that does not meet the bar; never worth a retry."""


class StepSkipped(Exception):  # noqa: N818 - an outcome, not an error
    """The step has nothing to do (push of a model that is not blessed, a sync of a pipeline with no model yet):
    an outcome, not a failure; the DAG shows the task as skipped."""


def one_line(exc: BaseException) -> str:
    """`TypeName: first line of the message`, as kiln reports rejected input everywhere."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
