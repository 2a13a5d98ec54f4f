"""Hyperparameter tuning: one Optuna study per (search space, data, model code), shared by every tune task.

Why Optuna and its RDB storage rather than KerasTuner's oracle: the study lives in a database the stack
already runs (SQLite beside the artifacts embedded, Postgres on a fleet), so any number of tune tasks on any
workers draw trials from it with no process of its own to keep alive; a trial's heartbeat lets a killed task
lose only its running trial (it is marked failed and retried), and the study outlives the run, so a rerun with
the same space and data finds its trials finished and runs none.

A trial builds kiln's model with the trial's values (`train.learning_rate`, `train.batch_size`,
`train.hparams.*`), fits it on the train split less a held-out tuning split (`tune.tuning_percent`, never the
eval split) and reports the objective on the tuning split after every epoch; with `early_stopping`, Optuna's
median pruner stops a trial that falls behind. Each trial is an MLflow run under the DAG run's parent run, with
its values as params and the objective per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from tasks import tracking
from tasks.artifacts.examples import Examples
from tasks.artifacts.transform import TransformGraph
from tasks.code_digest import model_code_digest
from tasks.config import SearchParam, TrainConfig, TuneConfig
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.metrics import HIGHER, TASK_METRICS

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5  # a running trial's heartbeat; one silent for GRACE_SECONDS was killed
GRACE_SECONDS = 15
STUDY_DB = ".tuning/studies.db"
TRIAL_TAG = "kiln.trial"


class TuningError(BadInputError):
    """The study cannot be opened or has no finished trial; one line saying why."""


@dataclass(frozen=True)
class Outcome:
    """What the study holds: its counts and best trial (`best` keyed by the space's dotted paths)."""

    study: str
    trials: int
    completed: int
    pruned: int
    failed: int
    parallelism: int
    objective: str
    best_params: dict[str, Any]
    best_metric: float

    def summary(self) -> dict[str, Any]:
        return {"study": self.study, "trials": self.trials, "completed": self.completed, "pruned": self.pruned,
                "failed": self.failed, "parallelism": self.parallelism,
                "best": {"params": self.best_params, "metric": {self.objective: self.best_metric}}}


def storage_url(ctx: StepContext, tune: TuneConfig) -> str:
    if tune.storage:
        return tune.storage
    if "://" in ctx.artifact_root and not ctx.artifact_root.startswith("file://"):
        raise TuningError(f"tune.storage: the artifact root {ctx.artifact_root} is object storage; give the study "
                          f"a database URL (postgresql+psycopg2://...) the tune tasks can all reach")
    from pathlib import Path

    path = Path(ctx.artifact_root.removeprefix("file://")) / ctx.pipeline / STUDY_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(ctx: StepContext, tune: TuneConfig, train: TrainConfig, examples: Examples,
               transform: TransformGraph) -> str:
    """The same space, objective, sampler, data, preprocessing and model code: the same study, whose finished
    trials a rerun reuses."""
    fixed = train.model_dump(mode="json", exclude={"epochs", "timeout_minutes", "worker_timeout_seconds",
                                                   "max_restarts", "num_workers", "launcher", "kubernetes"})
    identity = {"tune": tune.model_dump(mode="json", exclude={"trials", "parallelism", "storage", "timeout_minutes"}),
                "train": fixed | {"model": model_code_digest(train.model)}, "epochs": tune.epochs or train.epochs,
                "examples": examples.fingerprint, "transform": transform.fingerprint, "task": ctx.task_type}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{ctx.pipeline}-{digest}"


def direction(task: str, objective: str) -> str:
    return "maximize" if TASK_METRICS[task][objective] == HIGHER else "minimize"


def open_study(url: str, name: str, tune: TuneConfig, task: str, attempts: int = 5) -> Any:
    """The study, created on first use. Tune instances start together: on a fresh database they race to create
    Optuna's tables, and the losers try again."""
    import random
    import time

    import sqlalchemy.exc

    for _ in range(attempts - 1):
        try:
            return _open_study(url, name, tune, task)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            time.sleep(0.5 + random.random())
    return _open_study(url, name, tune, task)


def _open_study(url: str, name: str, tune: TuneConfig, task: str) -> Any:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are marked experimental since Optuna 2.8; they are what kiln relies on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
    sampler = (optuna.samplers.TPESampler(seed=None, n_startup_trials=min(4, tune.trials))
               if tune.algorithm == "tpe" else optuna.samplers.RandomSampler())
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if tune.early_stopping
              else optuna.pruners.NopPruner())
    return optuna.create_study(storage=storage, study_name=name, direction=direction(task, tune.objective),
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def suggest(trial: Any, space: dict[str, SearchParam]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path, param in space.items():
        if param.type == "int":
            values[path] = trial.suggest_int(path, int(param.low or 0), int(param.high or 0), log=param.log)
        elif param.type == "float":
            values[path] = trial.suggest_float(path, float(param.low or 0), float(param.high or 0), log=param.log)
        else:
            values[path] = trial.suggest_categorical(path, [_choice(v) for v in param.values or []])
    return {path: json.loads(v) if isinstance(v, str) and path in _json_choices(space) else v
            for path, v in values.items()}


def _json_choices(space: dict[str, SearchParam]) -> set[str]:
    """Choices of lists or dicts (hidden_units: [[64, 32], [128]]) travel through Optuna as JSON text."""
    return {p for p, s in space.items() if s.type == "choice" and any(isinstance(v, list | dict) for v in s.values or [])}


def _choice(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def with_values(train: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`train` with the trial's (or the best trial's) values in place."""
    hparams = dict(train.hparams)
    update: dict[str, Any] = {}
    for path, value in values.items():
        field = path.removeprefix("train.")
        if field.startswith("hparams."):
            hparams[field.removeprefix("hparams.")] = value
        else:
            update[field] = value
    return train.model_copy(update={**update, "hparams": hparams})


def run_trials(ctx: StepContext, tune: TuneConfig, train: TrainConfig, examples: Examples,
               transform: TransformGraph, instance: int) -> int:
    """Draw trials from the shared study until it holds `tune.trials` finished or pruned ones; the number this task
    ran."""
    import time

    import optuna
    from optuna.trial import TrialState

    name = study_name(ctx, tune, train, examples, transform)
    study = open_study(storage_url(ctx, tune), name, tune, ctx.task_type)
    data = _TrialData.load(tune, train, examples, transform)
    done = 0

    def objective(trial: Any) -> float:
        values = suggest(trial, tune.space)
        state, value = _run_trial(ctx, tune, train, data, trial, values)
        log.info("tune %d: trial %d %s %s(%s)", instance, trial.number, state, "" if value is None else
                 f"{tune.objective}={value:.4f} ", _shown(values))
        if state == "pruned":
            raise optuna.TrialPruned()
        return float("nan") if value is None else value

    # optimize() one trial at a time: it beats the trial's heartbeat, first fails the trials of a killed task
    # (RetryHeartbeatStaleTrialCallback enqueues them again) and marks a trial that raises as failed.
    while True:
        # A killed task's running trial has no heartbeat: failed here, it counts no more and is enqueued again.
        optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        if finished >= tune.trials:
            break
        if finished + states.count(TrialState.RUNNING) >= tune.trials:
            # The rest is running elsewhere: wait for it to end, or for its heartbeat to stop (then it is retried
            # here), so the study is whole when the last tune task ends.
            time.sleep(HEARTBEAT_SECONDS)
            continue
        study.optimize(objective, n_trials=1, gc_after_trial=False)
        done += 1
    log.info("tune %d: ran %d trials of study %s", instance, done, name)
    return done


def outcome(ctx: StepContext, tune: TuneConfig, train: TrainConfig, examples: Examples,
            transform: TransformGraph) -> Outcome:
    import optuna

    name = study_name(ctx, tune, train, examples, transform)
    study = open_study(storage_url(ctx, tune), name, tune, ctx.task_type)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    completed = states.count(optuna.trial.TrialState.COMPLETE)
    if not completed:
        raise TuningError(f"tune: study {name} has no finished trial ({len(states)} trials: see the tune tasks' logs)")
    best = study.best_trial
    return Outcome(study=name, trials=len(states), completed=completed,
                   pruned=states.count(optuna.trial.TrialState.PRUNED), failed=states.count(optuna.trial.TrialState.FAIL),
                   parallelism=tune.parallelism, objective=tune.objective,
                   best_params=_decoded(best.params, tune.space), best_metric=float(best.value))


def _decoded(params: dict[str, Any], space: dict[str, SearchParam]) -> dict[str, Any]:
    lists = _json_choices(space)
    return {p: json.loads(v) if p in lists else v for p, v in params.items()}


def _shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('train.')}={v:.4g}" if isinstance(v, float) else f"{k.removeprefix('train.')}={v}"
                     for k, v in values.items())


@dataclass
class _TrialData:
    """The train split's first `max_examples`, cut into what trials fit and the tuning split they are scored on."""

    fit_inputs: dict[str, Any]
    fit_targets: Any
    tune_inputs: dict[str, Any]
    tune_targets: Any
    preprocessing: Any

    @classmethod
    def load(cls, tune: TuneConfig, train: TrainConfig, examples: Examples, transform: TransformGraph) -> _TrialData:
        import numpy as np

        from tasks.features import load_arrays

        preprocessing = transform.preprocessing()
        inputs, targets = load_arrays(examples.split_files("train"), preprocessing.features, preprocessing.label,
                                      limit=tune.max_examples)
        order = np.random.default_rng(train.seed).permutation(len(targets))
        held = max(1, len(order) * tune.tuning_percent // 100)
        if len(order) - held < 1:
            raise TuningError(f"tune: the train split has {len(order)} examples, too few to hold out a tuning split")
        tuning, fitting = order[:held], order[held:]
        return cls({k: v[fitting] for k, v in inputs.items()}, targets[fitting],
                   {k: v[tuning] for k, v in inputs.items()}, targets[tuning], preprocessing)


def _run_trial(ctx: StepContext, tune: TuneConfig, base: TrainConfig, data: _TrialData, trial: Any,
               values: dict[str, Any]) -> tuple[str, float | None]:
    """Fit one trial's model epoch by epoch, reporting the objective; (complete, pruned or failed; its last
    objective value)."""
    import math

    import tf_keras as keras

    from tasks.metrics import classification_metrics, regression_metrics
    from tasks.models.assemble import build_model, compile_model

    train = with_values(base, values)
    label = data.preprocessing.label
    keras.utils.set_random_seed(base.seed + trial.number)
    model = build_model(data.preprocessing, train.model, train.hparams)
    compile_model(model, label, train.learning_rate)
    mlflow_client = tracking.client(ctx)
    run = mlflow_client.create_run(
        tracking.experiment_id(mlflow_client, ctx.experiment), run_name=f"trial {trial.number}",
        tags={tracking.PARENT_TAG: tracking.parent_run(ctx), tracking.STEP_TAG: "tune", tracking.ROLE_TAG: "trial",
              tracking.RUN_ID_TAG: ctx.run_id, TRIAL_TAG: str(trial.number)})
    run_id = run.info.run_id
    for path, value in values.items():
        mlflow_client.log_param(run_id, path, json.dumps(value) if isinstance(value, list | dict) else value)
    value: float | None = None
    state = "complete"
    try:
        for epoch in range(tune.epochs or base.epochs):
            model.fit(data.fit_inputs, data.fit_targets, batch_size=train.batch_size, epochs=epoch + 1,
                      initial_epoch=epoch, verbose=0)
            predicted = model.predict(data.tune_inputs, batch_size=1024, verbose=0)
            if label.task == "classification":
                scores = classification_metrics(data.tune_targets, predicted, label.classes or [])
            else:
                scores = regression_metrics(data.tune_targets, predicted.reshape(-1))
            value = float(scores[tune.objective])
            mlflow_client.log_metric(run_id, tune.objective, value, step=epoch + 1)
            if math.isnan(value):
                state = "failed"
                break
            trial.report(value, epoch)
            if trial.should_prune():
                state = "pruned"
                break
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_tag(run_id, "kiln.trial_state", state)
    mlflow_client.set_terminated(run_id, "FAILED" if state == "failed" else "FINISHED")
    return state, value
