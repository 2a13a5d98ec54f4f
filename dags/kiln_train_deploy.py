"""kiln_train_deploy: raw CSV to a served, verified model.

ingest → validate → transform → train → evaluate → optimize → register → push → verify

Wiring only: each task is a thin wrapper over `tasks.<step>.run(config, ctx, **input_uris)`,
which returns artifact URIs (the only thing that travels through XCom). Heavy imports happen
inside the tasks, so parsing this file stays fast. Placement (executor, queue, pool) comes from
the config's `placement` section, not from code.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from airflow.sdk import Param, dag, get_current_context, task, teardown  # noqa: E402
from airflow.sdk.exceptions import AirflowFailException  # noqa: E402

from tasks.config import OVERRIDABLE, ConfigError, load_placement  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Which pipeline YAML this DAG file places and defaults to (relative to the repo).
DEFAULT_CONFIG = os.environ.get("KILN_PIPELINE_CONFIG", "pipelines/digits.yaml")
PLACEMENT = load_placement(REPO_ROOT / DEFAULT_CONFIG)


def _placed(step: str) -> dict[str, str]:
    """Task arguments for the step's placement (unset fields keep Airflow's defaults)."""
    chosen = PLACEMENT.steps.get(step, PLACEMENT.default)
    return {k: v for k, v in chosen.model_dump().items() if v is not None}


def _config_and_context():
    from tasks.artifacts import StepContext
    from tasks.config import load_config

    context = get_current_context()
    params = context["params"]
    try:
        config = load_config(REPO_ROOT / params["config_path"], {k: params.get(k) for k in OVERRIDABLE})
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None
    ctx = StepContext(
        artifact_root=os.environ.get("KILN_ARTIFACT_ROOT", str(REPO_ROOT / ".kiln" / "artifacts")),
        pipeline=config.pipeline,
        run_id=context["run_id"],
        try_number=context["ti"].try_number,
    )
    return config, ctx


def _run_step(step: str, **input_uris: str) -> dict[str, str]:
    """Load the run's config and call the step; bad input fails the task without retries."""
    import importlib

    from tasks.errors import BadInputError

    config, ctx = _config_and_context()
    module = importlib.import_module(f"tasks.{step}")
    try:
        return module.run(config, ctx, **input_uris)
    except BadInputError as exc:
        # Retrying cannot fix bad data, a bad config or an unblessed model.
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None


_nullable = {"integer": ["null", "integer"], "number": ["null", "number"], "string": ["null", "string"]}


@dag(
    dag_id="kiln_train_deploy",
    description="Train a TensorFlow model from raw CSV, register it in MLflow and serve it with TF Serving",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["kiln", "training", "deployment"],
    default_args={"owner": "kiln", "retries": 1, "retry_delay": timedelta(seconds=5)},
    params={
        "config_path": Param(DEFAULT_CONFIG, type="string", description="pipeline YAML, relative to the repo"),
        "data_source": Param(None, type=_nullable["string"], description="CSV path; empty = config value"),
        "epochs": Param(None, type=_nullable["integer"], minimum=1, description="empty = config value"),
        "batch_size": Param(None, type=_nullable["integer"], minimum=1, description="per-worker batch size"),
        "learning_rate": Param(None, type=_nullable["number"], exclusiveMinimum=0),
        "num_workers": Param(None, type=_nullable["integer"], minimum=1, description="training worker processes"),
        "min_accuracy": Param(None, type=_nullable["number"], minimum=0, maximum=1, description="blessing threshold"),
    },
    doc_md=__doc__,
)
def kiln_train_deploy():
    @task(multiple_outputs=True, **_placed("ingest"))
    def ingest() -> dict[str, str]:
        return _run_step("ingest")

    @task(multiple_outputs=True, **_placed("validate"))
    def validate(examples: str) -> dict[str, str]:
        return _run_step("validate", examples=examples)

    @task(multiple_outputs=True, **_placed("transform"))
    def transform(examples: str, schema: str) -> dict[str, str]:
        return _run_step("transform", examples=examples, schema=schema)

    @task(multiple_outputs=True, execution_timeout=timedelta(minutes=30), **_placed("train"))
    def train(examples: str, transform: str) -> dict[str, str]:
        return _run_step("train", examples=examples, transform=transform)

    @task(multiple_outputs=True, **_placed("evaluate"))
    def evaluate(model: str, examples: str) -> dict[str, str]:
        return _run_step("evaluate", model=model, examples=examples)

    @task(multiple_outputs=True, **_placed("optimize"))
    def optimize(model: str, examples: str) -> dict[str, str]:
        return _run_step("optimize", model=model, examples=examples)

    @task(multiple_outputs=True, **_placed("register"))
    def register(model: str, evaluation: str, optimized: str) -> dict[str, str]:
        return _run_step("register", model=model, evaluation=evaluation, optimized=optimized)

    @task(multiple_outputs=True, **_placed("push"))
    def push(registered: str, model: str, optimized: str, examples: str) -> dict[str, str]:
        return _run_step("push", registered=registered, model=model, optimized=optimized, examples=examples)

    @task(multiple_outputs=True, **_placed("verify"))
    def verify(pushed: str, registered: str, model: str, examples: str) -> dict[str, str]:
        return _run_step("verify", pushed=pushed, registered=registered, model=model, examples=examples)

    @teardown
    @task(**_placed("finish_tracking"))
    def finish_tracking() -> None:
        """Close the MLflow parent run as FINISHED or FAILED, whatever happened upstream."""
        from tasks import tracking

        config, ctx = _config_and_context()
        verified = get_current_context()["ti"].xcom_pull(task_ids="verify")
        tracking.finish_parent(config, ctx, "FINISHED" if verified else "FAILED")

    examples = ingest()["examples"]
    validated = validate(examples)
    transformed = transform(examples, validated["schema"])
    model = train(examples, transformed["transform"])["model"]
    evaluation = evaluate(model, examples)["evaluation"]
    optimized = optimize(model, examples)["optimized"]
    registered = register(model, evaluation, optimized)["registered"]
    pushed = push(registered, model, optimized, examples)["pushed"]
    verify(pushed, registered, model, examples) >> finish_tracking()


kiln_train_deploy()
