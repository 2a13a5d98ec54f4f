"""The pipeline config: one strict, frozen model per pipeline YAML.

Invalid configs fail at parse time with the field's dotted path in a one-line message, so
`kiln run` can refuse a bad file before anything is triggered. DAG params and `kiln run --param`
change single fields (`with_values`); the step registry says which fields are exposed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator

from serving.target import RequestLog
from tasks.compression.variants import ALL as ALL_VARIANTS
from tasks.compression.variants import VariantName
from tasks.context import ServingEndpoints
from tasks.errors import BadInputError
from tasks.metrics import TASK_METRICS
from tasks.models.contract import is_file_reference

TaskType = Literal["classification", "regression"]
ClassValue = str | int | bool


class ConfigError(BadInputError):
    """A config that cannot be used; the message is one line naming the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageConfig(_Strict):
    height: int = Field(ge=1, le=4096, description="pixels; every image is resized (bilinear) to height x width")
    width: int = Field(ge=1, le=4096)
    channels: Literal[1, 3] = Field(3, description="1: greyscale, 3: RGB")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels


class DataConfig(_Strict):
    source: str = Field(description="CSV (with a header row), Parquet, JSON-lines or TFRecord file, a folder of "
                                    "them or a glob, or an image folder (a folder per class): a path relative to "
                                    "the YAML or any fsspec URL; ${VARS} are expanded; {SPAN} in the file name "
                                    "reads spans (span-{SPAN}.csv: the newest)")
    format: Literal["csv", "parquet", "jsonl", "tfrecord", "images"] | None = Field(
        None, description="the source's format; default: from its suffix (.csv[.gz], .parquet/.pq, "
                          ".jsonl/.ndjson/.json, .tfrecord[s][.gz]); a folder of PNG/JPEG files is images")
    image: ImageConfig | None = Field(None, description="an image folder's images are decoded to this shape "
                                                        "(kiln init writes the first image's)")
    span: int | None = Field(None, ge=1, description="the span to read when source has {SPAN} (default: the "
                                                     "newest; the run records which)")
    label_column: str = Field("label", min_length=1, description="the column to predict")
    eval_percent: int = Field(20, ge=1, le=99, description="share of rows hashed into the eval split")
    num_shards: int = Field(2, ge=1, le=64, description="Parquet files per split of the ingested examples")
    max_bad_rows: int = Field(0, ge=0, description="CSV rows without the header's number of fields that ingest "
                                                   "skips, counts and reports (validate: a warning anomaly); one "
                                                   "more is an error naming the first")
    engine: Literal["local", "dask"] = Field(
        "local", description="where the data steps (ingest, validate, transform) run: local, in the task's own "
                             "process, streamed; dask, in partitions on a Dask cluster")
    dask_scheduler: str | None = Field(None, description="the Dask scheduler's address (tcp://host:8786); default "
                                                          "with engine dask: a local cluster of engine_workers")
    engine_workers: int = Field(2, ge=1, le=256, description="processes of the local Dask cluster")
    partition_bytes: ByteSize = Field(ByteSize(64 << 20), description="the source bytes per partition on the "
                                                                      "engine (e.g. 64MiB)")
    memory_budget: ByteSize = Field(ByteSize(1 << 30), description="the most of a split's data (uncompressed) that "
                                    "training keeps in memory between epochs; a bigger split is streamed from its "
                                    "files every epoch (e.g. 512MiB, 4GiB)")
    schema_path: str | None = Field(
        None, description="curated schema (TFDV Schema text proto); inferred from the data when absent"
    )

    @model_validator(mode="after")
    def _image_folder_has_a_shape(self) -> DataConfig:
        if self.format == "images" and self.image is None:
            raise ValueError("format images needs data.image: {height, width, channels} to decode the images to")
        return self

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return self.image.shape if self.image is not None else None


class TaskConfig(_Strict):
    type: TaskType = Field(description="classification (the label is a class) or regression (a number)")
    classes: list[ClassValue] | None = Field(
        None, description="the label's classes in output order; default: the schema's label domain, else "
                          "the distinct labels of the train split")

    @model_validator(mode="after")
    def _classes_fit_the_task(self) -> TaskConfig:
        if self.classes is None:
            return self
        if self.type == "regression":
            raise ValueError("classes are only for classification")
        if len(self.classes) < 2:
            raise ValueError("classification needs at least two classes")
        if len(set(map(repr, self.classes))) != len(self.classes):
            raise ValueError("classes must be distinct")
        if len({type(c) for c in self.classes}) != 1:
            raise ValueError("classes must all be strings, all integers or all booleans")
        return self


class TransformConfig(_Strict):
    feature_groups: dict[str, list[str]] = Field(
        {}, description="numeric columns served together as one vector input, e.g. {pixels: ['pixel_*']} "
                        "(names or glob patterns, in CSV order)")
    discretize: dict[str, int] = Field(
        {}, description="numeric feature -> number of quantile buckets (one-hot), e.g. {age: 8}")
    max_vocabulary: int = Field(100, ge=1, le=100_000,
                                description="most frequent values kept per categorical feature; others are OOV")


QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"  # a Kubernetes resource quantity
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class WorkerResources(_Strict):
    """Requests per training worker pod; limits are the same (a GPU can only be requested as a limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)  # `gpu` round-trips too

    cpu: str | None = Field(None, pattern=QUANTITY, description="CPU per worker, e.g. '4' or '500m'")
    memory: str | None = Field(None, pattern=QUANTITY, description="memory per worker, e.g. '16Gi'")
    gpu: int = Field(0, ge=0, le=16, alias="nvidia.com/gpu",
                     description="nvidia.com/gpu per worker (NCCL all-reduce when > 0)")


class Toleration(_Strict):
    key: str | None = Field(None, description="taint key; empty with operator Exists tolerates every taint")
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0, description="NoExecute only: how long the pod stays")

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists has no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration_seconds only applies to effect NoExecute")
        return self


class KubernetesTraining(_Strict):
    """Where and how the worker group runs as pods when train.launcher is kubernetes."""

    image: str = Field(min_length=1, description="image with kiln installed (the same code as the Airflow "
                                                 "workers); its python runs tasks.training.worker")
    namespace: str = Field("default", pattern=DNS_LABEL, description="namespace of the job and its pods")
    operator: Literal["tfjob", "indexed-job"] = Field(
        "tfjob", description="tfjob: a Kubeflow TFJob (the training operator sets TF_CONFIG); indexed-job: a "
                             "batch/v1 Indexed Job plus a headless Service, for clusters without the operator")
    resources: WorkerResources = WorkerResources()
    node_selector: dict[str, str] = Field({}, description="node labels the worker pods must match")
    tolerations: list[Toleration] = Field([], description="taints the worker pods tolerate, e.g. GPU nodes'")
    service_account: str | None = Field(None, pattern=DNS_LABEL,
                                        description="service account of the pods (object-storage access)")
    env: dict[str, str] = Field({}, description="extra environment of the workers, e.g. AWS_ENDPOINT_URL")
    env_from_secret: str | None = Field(None, pattern=DNS_LABEL,
                                        description="a Secret whose keys become the workers' environment "
                                                    "(object-storage credentials)")
    port: int = Field(2222, ge=1, le=65535, description="the workers' gRPC port (MultiWorkerMirroredStrategy)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class TrainConfig(_Strict):
    model: str = Field("mlp", min_length=1,
                       description="model body: mlp, cnn, path/to/file.py:function or package.module:function")
    hparams: dict[str, Any] = Field({}, description="free mapping handed to the model function")
    epochs: int = Field(12, ge=1, le=1000, description="passes over the train split")
    batch_size: int = Field(64, ge=1, le=65536, description="batch size per replica (a GPU, or a worker's CPU): "
                                                            "the global batch is this x the replicas")
    learning_rate: float = Field(0.002, gt=0, lt=1, description="Adam's learning rate")
    num_workers: int = Field(1, ge=1, le=64, description="training worker processes (MultiWorkerMirroredStrategy)")
    strategy: Literal["auto", "mirrored", "multi_worker"] = Field(
        "auto", description="mirrored: one worker over its local GPUs; multi_worker: num_workers workers with "
                            "gpus_per_worker GPUs each; auto: mirrored for one worker on several GPUs, else multi_worker")
    gpus_per_worker: int | None = Field(None, ge=1, le=64, description="GPUs each worker gets (its own slice of "
                                                                       "CUDA_VISIBLE_DEVICES); default: the visible "
                                                                       "GPUs split evenly")
    mixed_precision: Literal["mixed_float16", "mixed_bfloat16"] | None = Field(
        None, description="Keras mixed precision (float16 needs a GPU: without one it warns and trains in float32); "
                          "the head and the served outputs stay float32")
    jit_compile: bool = Field(False, description="compile the training step with XLA")
    seed: int = Field(7, description="random seed for weights and shuffling")
    worker_timeout_seconds: int = Field(900, ge=10, description="deadline for the whole worker group, restarts "
                                                                "included")
    timeout_minutes: int = Field(30, ge=1, le=10080, description="the Airflow task's execution_timeout (raise it "
                                                                 "with the data: training streams every epoch)")
    max_restarts: int = Field(2, ge=0, le=100, description="times the worker group is started again after a worker "
                                                           "dies; training resumes at the last finished epoch")
    launcher: Literal["local", "kubernetes"] = Field(
        "local", description="local: worker processes on this machine (loopback); kubernetes: worker pods "
                             "(train.kubernetes), artifacts exchanged through object storage")
    kubernetes: KubernetesTraining | None = Field(None, description="the pods' image, namespace, resources, "
                                                                    "node selector and tolerations")

    @model_validator(mode="after")
    def _launcher_settings(self) -> TrainConfig:
        if self.launcher == "kubernetes" and self.kubernetes is None:
            raise ValueError("launcher kubernetes needs a train.kubernetes section (at least its image)")
        if self.strategy == "mirrored" and self.num_workers > 1:
            raise ValueError(f"strategy mirrored is one worker over its local GPUs; num_workers {self.num_workers} "
                             f"needs strategy multi_worker (or auto)")
        return self


class ChangeThreshold(_Strict):
    """TFMA's change threshold: how much better than the champion the candidate must be, in the metric's
    own direction (negative: a loss that is tolerated)."""

    absolute: float | None = Field(None, description="improvement at least this much, e.g. -0.005 for accuracy")
    relative: float | None = Field(None, description="improvement / |champion's value| at least this much")

    @model_validator(mode="after")
    def _one_kind(self) -> ChangeThreshold:
        if (self.absolute is None) == (self.relative is None):
            raise ValueError("give exactly one of absolute or relative")
        return self


class EvaluateConfig(_Strict):
    max_examples: int = Field(
        200_000, ge=100, description="eval examples scored (the split's first, in file order: the split is "
                                     "already a hash sample of the data); bounds evaluate's memory on big data")
    thresholds: dict[str, float] = Field(
        {}, description="blessing thresholds by metric, e.g. {accuracy: 0.9} or {rmse: 60}; higher-is-better "
                        "metrics must reach the value, lower-is-better ones must not exceed it")
    change_thresholds: dict[str, ChangeThreshold] = Field(
        {}, description="against the @champion on the same examples, e.g. {accuracy: {absolute: -0.005}}: "
                        "no worse by more than half a point")
    slices: list[list[str]] = Field(
        [], description="feature columns to slice the eval split by, e.g. [[plan], [plan, region]]")
    slice_thresholds: dict[str, float] = Field({}, description="value thresholds every slice must meet")
    bucket_boundaries: dict[str, list[float]] = Field(
        {}, description="numeric slice columns: bucket edges, e.g. {tenure: [12, 24, 48]}")
    min_slice_examples: int = Field(10, ge=1, description="smaller slices are reported but not checked")


class OptimizeConfig(_Strict):
    max_examples: int = Field(200_000, ge=100, description="eval examples each variant is measured on (the "
                                                            "split's first; bounds optimize's memory)")
    timeout_minutes: int = Field(30, ge=1, le=10080, description="the Airflow task's execution_timeout")
    variants: list[VariantName] = Field(
        list(ALL_VARIANTS),
        description="compressed variants to build and measure against the float32 TFLite baseline ([] for "
                    "the baseline only)")
    budget: float | None = Field(
        None, ge=0, description="metric loss accepted for a smaller model: accuracy points for classification "
                                "(default 1.0), relative RMSE increase for regression (default 0.05); 0 keeps "
                                "the float model")
    target_sparsity: float = Field(0.8, gt=0, lt=1, description="share of weights magnitude pruning zeroes")
    fine_tune_epochs: int = Field(2, ge=1, le=100, description="epochs of pruning / quantization-aware fine-tuning")
    fine_tune_learning_rate: float | None = Field(None, gt=0, lt=1,
                                                  description="default: a tenth of train.learning_rate")
    prune_skip: list[str] = Field([], description="layers (names or glob patterns) never pruned; the head never is")
    integer_io: bool = Field(False, description="int8 inputs and outputs for the int8 variants (edge devices)")
    representative_examples: int = Field(200, ge=10, le=10_000, description="train examples that calibrate int8")
    latency_runs: int = Field(200, ge=10, le=100_000, description="batch-1 calls timed per variant")


class RegistryConfig(_Strict):
    model_name: str | None = Field(None, min_length=1, description="MLflow registered model (default kiln-<pipeline>)")
    experiment: str = Field("kiln", min_length=1, description="MLflow experiment of the runs")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: the stack's)")


class RequestLogConfig(_Strict):
    sampling_rate: float = Field(ge=0, le=1, allow_inf_nan=False,
                                 description="share of the served model's requests logged, from 0 to 1")
    path: str = Field(min_length=1, description="where the server writes them: <path>/<model>/<version>/*.tfrecord "
                                                "(a folder the server can write, or an s3:// URL; relative to the YAML)")

    def settings(self) -> RequestLog:
        return RequestLog(path=self.path, sampling_rate=self.sampling_rate)


class ServingConfig(_Strict):
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                                   description="served model name (default: the pipeline name)")
    format: Literal["auto", "saved_model", "tflite"] = Field(
        "auto", description="what ships: auto (the selected variant's TFLite file, or the trained SavedModel when "
                            "no variant was selected over the float baseline), saved_model or tflite")
    verify_examples: int = Field(32, ge=1, le=1000, description="eval rows replayed against the server")
    tolerance: float = Field(1e-4, gt=0, description="max |served - in-process| output difference")
    max_p99_ms: float | None = Field(
        1000.0, gt=0, description="InfraValidator: a candidate slower than this at p99 (batch 1, in the sandbox) "
                                  "is not infra-blessed (null: no latency gate)")
    infra_examples: int = Field(20, ge=1, le=1000, description="eval rows sent one by one over REST and gRPC "
                                                               "in the sandbox")
    infra_load_timeout_seconds: int = Field(120, ge=5, description="deadline for the sandbox to load the candidate")
    sandbox_binary: str = Field("kiln-model-server", min_length=1,
                                description="the sandbox server (tensorflow_model_server takes the same flags)")
    sandbox: ServingEndpoints | None = Field(
        None, description="InfraValidator on a running TF Serving kept for validation (rest_url, grpc_address, "
                          "model_base_path, config_file) instead of starting sandbox_binary; the candidate is "
                          "loaded there as <model>-infra-validation and unloaded afterwards")
    rest_url: str | None = Field(None, description="TF Serving REST address (default: the stack's)")
    grpc_address: str | None = Field(None, description="TF Serving gRPC host:port (default: the stack's)")
    model_base_path: str | None = Field(None, description="folder TF Serving loads versions from (default: the stack's)")
    config_file: str | None = Field(None, description="TF Serving's --model_config_file (default: the stack's)")
    force_push_reason: str | None = Field(
        None, min_length=3, description="push even if the model is not blessed, and record why (a trigger "
                                        "param only, never in the YAML)")
    promotion: Literal["auto", "approval"] = Field(
        "auto", description="auto: a verified canary becomes champion at once; approval: the run waits until a "
                            "person approves it (Airflow UI, REST API, `kiln approve`), and a rejection or a "
                            "timeout withdraws the canary")
    promotion_timeout_minutes: float = Field(
        1440, gt=0, le=43200, description="how long an approval waits for an answer (fractions allowed); then the "
                                          "canary is withdrawn and the timeout counted on the registered model")
    request_log: RequestLogConfig | None = Field(
        None, description="log a sample of the served model's requests as PredictionLog TFRecords (TF Serving's "
                          "logging_config, written by the deployer; kiln-model-server acts on it); default: off")


Executor = Literal["LocalExecutor", "CeleryExecutor", "KubernetesExecutor"]


class PodOverride(_Strict):
    """The task's pod on the KubernetesExecutor (Airflow's executor_config pod_override)."""

    image: str | None = Field(None, description="container image (default: the executor's worker image)")
    cpu: str | None = Field(None, description="CPU request and limit, e.g. '4'")
    memory: str | None = Field(None, description="memory request and limit, e.g. '16Gi'")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu limit")
    node_selector: dict[str, str] = Field({}, description="node labels the pod must run on")
    tolerations: list[dict[str, Any]] = Field([], description="Kubernetes tolerations (key, operator, value, effect)")


class StepPlacement(_Strict):
    executor: Executor | None = None
    queue: str | None = None
    pool: str | None = None
    pod_override: PodOverride | None = None


# The pipeline's steps, in run order: the names `placement.steps` may use. The step registry
# (tasks/registry.py) declares one spec per name, in this order; its tests check that the two agree.
StepName = Literal["resolve", "ingest", "validate", "transform", "tune", "train", "optimize", "evaluate", "register",
                   "infra_validate", "push", "verify", "approve", "promote", "finish_tracking"]


class PlacementConfig(_Strict):
    profile: str | None = Field(None, description="a placement profile of infra/profiles/ (local, hybrid, cloud); "
                                                   "`default` and `steps` here override it")
    default: StepPlacement = StepPlacement()
    steps: dict[StepName, StepPlacement] = {}


SCHEDULE_PRESETS = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
ON_NEW_DATA, ON_DRIFT = "on_new_data", "on_drift"


def check_schedule(value: str | None) -> str | None:
    """null, a cron preset or expression (Airflow's CronTriggerTimetable), on_new_data or on_drift."""
    from croniter import croniter

    if value is None or value in (ON_NEW_DATA, ON_DRIFT, *SCHEDULE_PRESETS) or croniter.is_valid(value):
        return value
    raise ValueError(f"{value!r} is not a schedule: use a cron expression ('0 3 * * *'), a preset "
                     f"({', '.join(SCHEDULE_PRESETS)}), {ON_NEW_DATA}, {ON_DRIFT} or null")


class DriftConfig(_Strict):
    numeric: float = Field(0.1, gt=0, le=1, description="Jensen-Shannon distance (base 2, 0-1) above which a "
                                                        "numeric feature has drifted")
    categorical: float = Field(0.1, gt=0, le=1, description="L-infinity distance of the value frequencies above "
                                                            "which a categorical feature has drifted")
    features: dict[str, float] = Field({}, description="per-feature thresholds that replace the two above")


class MonitorConfig(_Strict):
    schedule: str = Field("@hourly", description="when kiln_monitor_<pipeline> checks the newest span besides "
                                                 "on every new span (cron or preset)")
    drift: DriftConfig = DriftConfig()
    min_requests: int = Field(100, ge=1, description="served requests (logged by serving.request_log) a window needs "
                                                     "before its skew and drift are measured; fewer wait for the "
                                                     "next check")

    @model_validator(mode="after")
    def _cron(self) -> MonitorConfig:
        if self.schedule in (ON_NEW_DATA, ON_DRIFT):
            raise ValueError("monitor.schedule is a cron expression or preset; it runs on new data anyway")
        check_schedule(self.schedule)
        return self


def optimize_budget(task: TaskConfig, optimize: OptimizeConfig) -> float:
    """optimize.budget in the task's own units (accuracy points, or a relative RMSE increase)."""
    if optimize.budget is not None:
        return optimize.budget
    return 1.0 if task.type == "classification" else 0.05


TUNABLE = re.compile(r"^train\.(learning_rate|batch_size|hparams\.[A-Za-z_][A-Za-z0-9_]*)$")
# What the built-in model bodies read from train.hparams (tasks.models.builtin): tunable without being in the YAML.
BUILTIN_HPARAMS = {"mlp": {"hidden_units", "dropout", "activation"},
                   "cnn": {"image_shape", "filters", "dense_units", "dropout"}}


class SearchParam(_Strict):
    """One dimension of the search space: an int or float range (log-scaled when `log`), or a choice."""

    type: Literal["int", "float", "choice"]
    low: float | None = Field(None, description="the range's low end (int, float)")
    high: float | None = Field(None, description="the range's high end, included (int, float)")
    log: bool = Field(False, description="sample the range on a log scale (low > 0)")
    values: list[Any] | None = Field(None, description="the values to choose from (choice)")

    @model_validator(mode="after")
    def _well_formed(self) -> SearchParam:
        if self.type == "choice":
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("a choice takes a non-empty values list (no low/high)")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"an {self.type} range takes low and high (no values)")
        if self.low >= self.high:
            raise ValueError(f"empty or inverted range: low {self.low:g} >= high {self.high:g}")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("an int range takes whole numbers")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class TuneConfig(_Strict):
    objective: str = Field(description="the task's eval metric to optimise (accuracy, f1, rmse, ...), on a tuning "
                                       "split carved from train; its direction is the metric's own")
    trials: int = Field(ge=1, le=10_000, description="trials in the study (finished or pruned)")
    parallelism: int = Field(1, ge=1, le=64, description="tune task instances (Airflow dynamic task mapping), "
                                                         "each running trials of the one study")
    algorithm: Literal["tpe", "random"] = Field("tpe", description="Optuna's sampler: tpe or random")
    space: dict[str, SearchParam] = Field(min_length=1, description="dotted field -> range or choice: "
                                          "train.learning_rate, train.batch_size, train.hparams.*")
    epochs: int | None = Field(None, ge=1, le=1000, description="epochs per trial (default: train.epochs)")
    early_stopping: bool = Field(True, description="prune trials that fall behind the median of earlier ones "
                                                   "at the same epoch")
    tuning_percent: int = Field(20, ge=5, le=50, description="share of the train split held out to score trials")
    max_examples: int = Field(50_000, ge=100, description="train examples a trial reads (the split's first)")
    storage: str | None = Field(None, description="Optuna's study database (a SQLAlchemy URL, e.g. "
                                                  "postgresql+psycopg2://host/db: psycopg2 is installed); default: "
                                                  "a fleet's Postgres, else SQLite beside the artifacts (a local "
                                                  "artifact root)")
    timeout_minutes: int = Field(60, ge=1, le=10080, description="each tune task's execution_timeout")

    @model_validator(mode="after")
    def _parallelism_within_trials(self) -> TuneConfig:
        if self.parallelism > self.trials:
            raise ValueError(f"parallelism {self.parallelism} > trials {self.trials}: some tune tasks would "
                             f"have no trial to run")
        return self


CachedStep = Literal["ingest", "validate", "transform", "train", "optimize"]
CACHED_STEPS: tuple[str, ...] = get_args(CachedStep)
MAX_AGE = r"^[0-9]+(s|m|h|d|w)$"


class StepCacheConfig(_Strict):
    enabled: bool = Field(True, description="reuse this step's earlier outputs when its key matches")
    max_age: str | None = Field(None, pattern=MAX_AGE, description="this step's max_age (default: cache.max_age)")


class CacheConfig(_Strict):
    enabled: bool = Field(True, description="reuse a step's earlier outputs when its code, config, inputs (and "
                                            "for ingest its data) are the same; false: every step runs")
    max_age: str | None = Field(None, pattern=MAX_AGE, description="older outputs are not reused, e.g. 7d, 12h "
                                                                   "(s, m, h, d, w); default: any age")
    steps: dict[CachedStep, StepCacheConfig] = Field(
        {}, description="per step: {train: {enabled: false}}; the cached steps are " + ", ".join(get_args(CachedStep)))
    rerun: list[CachedStep] = Field([], description="steps that run in this run whatever their key (kiln run "
                                                    "--no-cache-step STEP)")


BATCH_PLACEHOLDERS = ("{date}", "{run}", "{span}")


class BatchConfig(_Strict):
    """Batch inference (`kiln predict`, kiln_batch_<pipeline>): a data set scored with a registered version."""

    data: str = Field(min_length=1, description="what to score: a file, folder, glob or image folder in any format "
                                                "ingest reads, relative to the YAML or any fsspec URL; {SPAN} in the "
                                                "file name scores the newest span")
    format: Literal["csv", "parquet", "jsonl", "tfrecord", "images"] | None = Field(
        None, description="the data's format (default: from its suffix, as for data.format)")
    output: str = Field(min_length=1, description="the folder the predictions go to (part-NNNNN files, _SUCCESS); "
                                                  "{date}, {run} and {span} are filled in per run")
    output_format: Literal["parquet", "csv"] = Field("parquet", description="parquet (probabilities as a list) or "
                                                                           "csv (a probability_<class> column each)")
    schedule: str | None = Field(None, description="when kiln_batch_<pipeline> runs by itself: cron or preset, "
                                                   "on_new_data (each new span of batch.data) or null (on trigger)")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$", description="the MLflow alias whose version scores")
    version: int | None = Field(None, ge=1, description="a version number instead of the alias")
    id_column: str | None = Field(None, min_length=1, description="an input column copied to the output as the "
                                                                  "row key (default: file and row number)")
    shards: int = Field(1, ge=1, le=256, description="Airflow task instances that score partitions in parallel")
    partition_bytes: ByteSize = Field(ByteSize(64 << 20), description="input bytes per partition (one output file "
                                                                      "each)")
    batch_rows: int = Field(4096, ge=1, le=1 << 20, description="rows per model call")
    overwrite: bool = Field(False, description="replace an output folder that exists (else the run is refused)")
    placement: StepPlacement | None = Field(None, description="where the scoring tasks run (default: evaluate's)")

    @model_validator(mode="after")
    def _checked(self) -> BatchConfig:
        try:
            check_schedule(self.schedule)
        except ValueError as exc:
            raise ValueError(f"batch.schedule: {exc}") from None
        if self.schedule == ON_DRIFT:
            raise ValueError("batch.schedule: on_drift starts retraining, not scoring; use on_new_data or a cron")
        if self.schedule == ON_NEW_DATA and "{SPAN}" not in self.data:
            raise ValueError("batch.schedule on_new_data needs batch.data with {SPAN} in the file name")
        unknown = {m for m in re.findall(r"(?<!\$)\{[^}]*\}", self.output) if m not in BATCH_PLACEHOLDERS}
        if unknown:
            raise ValueError(f"batch.output: unknown placeholder {sorted(unknown)[0]}; use {', '.join(BATCH_PLACEHOLDERS)}")
        return self


class PipelineConfig(_Strict):
    pipeline: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="name; the DAG is kiln_<pipeline>")
    description: str = Field("", description="what the model is for (shown in the DAG and the model card)")
    data: DataConfig
    task: TaskConfig
    schedule: str | None = Field(None, description="when the pipeline retrains by itself: a cron expression or "
                                                   "preset, on_new_data (every new span), on_drift (when "
                                                   "kiln_monitor_<pipeline> finds drift) or null (on trigger only)")
    monitor: MonitorConfig = MonitorConfig()
    transform: TransformConfig = TransformConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    placement: PlacementConfig = PlacementConfig()
    cache: CacheConfig = CacheConfig()
    tune: TuneConfig | None = Field(None, description="hyperparameter search before train (absent: none)")
    batch: BatchConfig | None = Field(None, description="batch inference with a registered version: "
                                                        "kiln_batch_<pipeline> (absent: no such DAG)")

    @model_validator(mode="after")
    def _schedule(self) -> PipelineConfig:
        try:
            check_schedule(self.schedule)
        except ValueError as exc:
            raise ValueError(f"schedule: {exc}") from None
        spanned = "{SPAN}" in self.data.source or self.data.span is not None  # a run's snapshot names its span
        watched = spanned or self.serving.request_log is not None  # the monitor reads spans or served traffic
        if (self.schedule == ON_NEW_DATA and not spanned) or (self.schedule == ON_DRIFT and not watched):
            raise ValueError(f"schedule {self.schedule} needs spans: data.source with {{SPAN}} in the file name, "
                             f"e.g. data/{self.pipeline}/span-{{SPAN}}.csv"
                             + (" (or serving.request_log, whose traffic the monitor watches)"
                                if self.schedule == ON_DRIFT else ""))
        return self

    @model_validator(mode="after")
    def _tunable_space(self) -> PipelineConfig:
        if self.tune is None:
            return self
        metrics = TASK_METRICS[self.task.type]
        if self.tune.objective not in metrics:
            raise ValueError(f"tune.objective: {self.tune.objective!r} is not a {self.task.type} metric; "
                             f"{self.task.type} metrics are {', '.join(sorted(metrics))}")
        known = set(self.train.hparams) | BUILTIN_HPARAMS.get(self.train.model, set())
        for path, param in self.tune.space.items():
            if not TUNABLE.match(path):
                raise ValueError(f"tune.space: {path!r} is not tunable (train.learning_rate, train.batch_size, "
                                 f"train.hparams.<name>)")
            name = path.removeprefix("train.hparams.")
            if path.startswith("train.hparams.") and name not in known:
                raise ValueError(f"tune.space: {path!r} is not in the config (train.hparams has "
                                 f"{sorted(known) or 'nothing'}; set a default there)")
            if path == "train.batch_size" and param.type == "float":
                raise ValueError("tune.space: train.batch_size takes an int range or a choice of ints")
        return self

    @model_validator(mode="after")
    def _known_names(self) -> PipelineConfig:
        metrics = TASK_METRICS[self.task.type]
        for field in ("thresholds", "change_thresholds", "slice_thresholds"):
            for name in getattr(self.evaluate, field):
                if name not in metrics:
                    raise ValueError(f"evaluate.{field}: {name!r} is not a {self.task.type} metric; "
                                     f"{self.task.type} metrics are {', '.join(sorted(metrics))}")
        return self


    @property
    def registered_model_name(self) -> str:
        return self.registry.model_name or f"kiln-{self.pipeline}"

    @property
    def served_model_name(self) -> str:
        return self.serving.model_name or self.pipeline

    def with_values(self, values: dict[str, Any], source: str = "parameters") -> PipelineConfig:
        """A copy with fields set by dotted path (`{"train.epochs": 3}`), validated again as a whole."""
        data = self.model_dump()
        for path, value in values.items():
            *sections, field = path.split(".")
            target = data
            for section in sections:
                if target[section] is None:  # an optional section the YAML leaves out (tune)
                    raise ConfigError(f"{path}: the pipeline has no {section} section to set it in")
                target = target[section]
            target[field] = value
        return validate_config(data, source)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if err["type"] == "missing":
        return f"missing field {where!r}"
    message = err["msg"].removeprefix("Value error, ")
    return f"field {where!r}: {message}" if err["loc"] else message


def validate_config(data: Any, source: str) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        expanded = os.path.expandvars(value)
        unset = _UNSET_VAR.search(expanded)
        if unset:
            raise ConfigError(f"{value!r} uses environment variable {unset.group(1)}, which is not set")
        return expanded
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML mapping of a pipeline file, or a one-line ConfigError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a folder, not a YAML file: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_config(path: str | os.PathLike[str], expand_env: bool = True) -> PipelineConfig:
    """Read YAML, expand ${VARS} in strings, validate strictly, make relative paths absolute.

    `expand_env=False` checks the structure only (DAG parsing, where the run's environment, e.g.
    ${KILN_HOME}, may not be set); paths then keep their variables.
    """
    path = Path(path)
    raw = read_yaml(path)
    if isinstance(raw.get("serving"), dict) and raw["serving"].get("force_push_reason") is not None:
        raise ConfigError(f"{path}: serving.force_push_reason is decided per run: pass it as a trigger param "
                          f"(-p force_push_reason='why'), never in the YAML")
    config = validate_config(_expand(raw) if expand_env else raw, source=str(path))
    return _resolve_paths(config, base=path.resolve().parent)


def _absolute(base: Path, p: str | None) -> str | None:
    if p is None or "://" in p or os.path.isabs(p) or "$" in p:
        return p
    return str((base / p).resolve())


def _resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    """Relative paths are relative to the config file, not to whatever the cwd is."""
    data = config.data.model_copy(
        update={"source": _absolute(base, config.data.source), "schema_path": _absolute(base, config.data.schema_path)}
    )
    train = config.train
    if is_file_reference(train.model):
        file, _, function = train.model.rpartition(":")
        train = train.model_copy(update={"model": f"{_absolute(base, file)}:{function}"})
    serving = config.serving
    if serving.request_log is not None:  # the server's working folder is not the YAML's
        request_log = serving.request_log.model_copy(update={"path": _absolute(base, serving.request_log.path)})
        serving = serving.model_copy(update={"request_log": request_log})
    batch = config.batch
    if batch is not None:
        batch = batch.model_copy(update={"data": _absolute(base, batch.data), "output": _absolute(base, batch.output)})
    return config.model_copy(update={"data": data, "train": train, "serving": serving, "batch": batch})
