"""Reading and validating the text protos the server takes: ModelServerConfig, BatchingParameters, MonitoringConfig.

ModelServerConfig comes from tensorflow-serving-api. BatchingParameters and MonitoringConfig are not shipped in
that package, so the two messages are declared here (same package, names and field numbers as
`session_bundle_config.proto` / `monitoring_config.proto`) in a private descriptor pool, which gives the exact
text-format grammar without hand-written parsing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.codec import ServingError

TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigFileError(Exception):
    """A config file that cannot be read or parsed; the message is the one-line startup error."""


def _build_extra_protos():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="kiln/tfs_extra_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def add(message, name, number, kind, type_name="", label=optional):
        added = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            added.type_name = type_name

    batching = file_proto.message_type.add(name="BatchingParameters")
    int64_value, msg = ".google.protobuf.Int64Value", field.TYPE_MESSAGE
    add(batching, "max_batch_size", 1, msg, int64_value)
    add(batching, "batch_timeout_micros", 2, msg, int64_value)
    add(batching, "max_enqueued_batches", 3, msg, int64_value)
    add(batching, "num_batch_threads", 4, msg, int64_value)
    add(batching, "thread_pool_name", 5, msg, ".google.protobuf.StringValue")
    add(batching, "allowed_batch_sizes", 6, field.TYPE_INT64, label=repeated)
    add(batching, "pad_variable_length_inputs", 7, field.TYPE_BOOL)
    add(batching, "enable_large_batch_splitting", 8, msg, ".google.protobuf.BoolValue")
    add(batching, "max_execution_batch_size", 9, msg, int64_value)

    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, field.TYPE_BOOL)
    add(prometheus, "path", 2, field.TYPE_STRING)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    add(monitoring, "prometheus_config", 1, msg, ".tensorflow.serving.PrometheusConfig")

    pool.Add(file_proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
    )


BatchingParametersProto, MonitoringConfigProto = _build_extra_protos()


def parse_text_proto_file(path: str, message_class):
    """Parse a text-format proto file, raising ConfigFileError with TF Serving's wording on failure."""
    full_name = message_class.DESCRIPTOR.full_name
    try:
        if "://" in path and not path.startswith("file://"):  # e.g. s3://bucket/models.config (TF Serving's too)
            import fsspec

            fs, remote = fsspec.core.url_to_fs(path)
            fs.invalidate_cache(remote)
            text = fs.cat_file(remote).decode("utf-8")
        else:
            with open(path.removeprefix("file://"), encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise ConfigFileError(f"Not found: {path}; {exc.strerror or exc}") from exc
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as exc:
        raise ConfigFileError(
            f"Error parsing text-format {full_name}: {exc} (Invalid protobuf file: '{path}')"
        ) from exc


def single_model_config(model_name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config tensorflow_model_server builds from --model_name/--model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def _platform(model: model_server_config_pb2.ModelConfig) -> str:
    if model.model_type:
        if model.model_platform:
            raise ServingError(
                "INVALID_ARGUMENT",
                "Illegal setting both ModelServerConfig::model_type (deprecated) and ModelServerConfig::model_platform.",
            )
        return TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise ServingError(
            "INVALID_ARGUMENT",
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform.",
        )
    return model.model_platform


def validate_transition(old, new) -> None:
    """Reject configs TF Serving's ServerCore::ReloadConfig rejects, with its messages."""
    old_kind, new_kind = old.WhichOneof("config"), new.WhichOneof("config")
    if old_kind is not None and not (old_kind == new_kind == "model_config_list"):
        raise ServingError(
            "FAILED_PRECONDITION",
            "Cannot transition to requested config. It is only legal to transition from one ModelConfigList to another.",
        )
    if new_kind == "custom_model_config":
        raise ServingError("INVALID_ARGUMENT", "Missing custom_model_config_loader in ServerCore Options")
    if new_kind is None:
        return
    seen: set[str] = set()
    for model in new.model_config_list.config:
        if model.name in seen:
            raise ServingError(
                "INVALID_ARGUMENT", f"Illegal to list model {model.name} multiple times in config list"
            )
        seen.add(model.name)
    check_logging_configs(new)
    for model in new.model_config_list.config:
        if not _is_absolute_uri(model.base_path):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}",
            )
    old_platforms = {m.name: _platform(m) for m in old.model_config_list.config}
    for model in new.model_config_list.config:
        platform = _platform(model)
        if platform != TENSORFLOW_PLATFORM:
            raise ServingError(
                "INVALID_ARGUMENT", f"Model {model.name} requests unsupported platform {platform}"
            )
        if model.name in old_platforms and old_platforms[model.name] != platform:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Illegal to change a model's platform. For model {model.name} platform was "
                f"{old_platforms[model.name]} and new platform requested is {platform}",
            )


FILE_LOG_COLLECTOR = "file"


def check_logging_configs(config) -> None:
    """Refuse logging configs this server cannot act on, as a TF Serving build with a request logger does."""
    for model in config.model_config_list.config:
        if not model.HasField("logging_config"):
            continue
        collector = model.logging_config.log_collector_config
        if collector.type != FILE_LOG_COLLECTOR:
            # LogCollector::Create's error for a type no factory is registered for (core/log_collector.cc).
            raise ServingError("NOT_FOUND", f"Cannot find LogCollector::Factory for type: {collector.type}")
        if not collector.filename_prefix:
            raise ServingError(
                "INVALID_ARGUMENT",
                f'Model {model.name}: log_collector_config of type "{FILE_LOG_COLLECTOR}" has no filename_prefix',
            )


def _is_absolute_uri(uri: str) -> bool:
    return "://" in uri or os.path.isabs(uri)


@dataclass(frozen=True)
class BatchingOptions:
    """Effective batching settings; unset fields take TensorFlow SharedBatchScheduler's defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False

    @classmethod
    def from_proto(cls, proto) -> BatchingOptions:
        defaults = cls()

        def wrapped(name, default):
            return getattr(proto, name).value if proto.HasField(name) else default

        options = cls(
            max_batch_size=wrapped("max_batch_size", defaults.max_batch_size),
            batch_timeout_micros=wrapped("batch_timeout_micros", defaults.batch_timeout_micros),
            max_enqueued_batches=wrapped("max_enqueued_batches", defaults.max_enqueued_batches),
            num_batch_threads=wrapped("num_batch_threads", defaults.num_batch_threads),
            allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
            enable_large_batch_splitting=wrapped("enable_large_batch_splitting", False),
        )
        if options.max_batch_size <= 0 or options.num_batch_threads <= 0 or options.max_enqueued_batches <= 0:
            raise ConfigFileError(
                "Invalid BatchingParameters: max_batch_size, num_batch_threads and max_enqueued_batches must be > 0"
            )
        if options.allowed_batch_sizes and options.allowed_batch_sizes[-1] != options.max_batch_size:
            raise ConfigFileError(
                "The last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                f"{options.allowed_batch_sizes[-1]}; expected {options.max_batch_size}"
            )
        return options


def load_batching_options(path: str | None) -> BatchingOptions:
    if not path:
        return BatchingOptions()
    return BatchingOptions.from_proto(parse_text_proto_file(path, BatchingParametersProto))


def load_prometheus_path(path: str | None) -> str | None:
    """The Prometheus page path, or None when monitoring is off."""
    if not path:
        return None
    config = parse_text_proto_file(path, MonitoringConfigProto)
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
