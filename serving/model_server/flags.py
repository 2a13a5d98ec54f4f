"""tensorflow_model_server's command-line flags: same names, same defaults, absl-style syntax.

Accepted forms: `--flag=value`, `--flag value`, and for booleans `--flag`, `--flag=true|false|1|0` and
`--noflag`. Any error is one line on stderr and exit code 255 (the binary's `return -1`).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

CPUS = os.cpu_count() or 1
FLAG_ERROR_EXIT = 255


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type
    default: object
    help: str


FLAGS = [
    Flag("port", int, 8500, "Port to listen on for gRPC API (0 disables gRPC)"),
    Flag("grpc_socket_path", str, "", "If non-empty, listen to a UNIX socket for gRPC API on the given path"),
    Flag("rest_api_port", int, 0, "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported. "
         "This port must be different than the one specified in --port."),
    Flag("rest_api_num_threads", int, 4 * CPUS, "Number of threads for HTTP/REST API processing"),
    Flag("rest_api_timeout_in_ms", int, 30000, "Timeout for HTTP/REST API calls"),
    Flag("rest_api_enable_cors_support", bool, False, "Enable CORS headers in response"),
    Flag("enable_batching", bool, False, "enable batching"),
    Flag("batching_parameters_file", str, "", "If non-empty, read an ascii BatchingParameters protobuf from the "
         "supplied file name and use the contained values instead of the defaults."),
    Flag("allow_version_labels_for_unavailable_models", bool, False, "If true, allows assigning unused version "
         "labels to models that are not available yet."),
    Flag("model_config_file", str, "", "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file "
         "name, and serve the models in that file. (If used, --model_name and --model_base_path are ignored.)"),
    Flag("model_config_file_poll_wait_seconds", int, 0, "Interval in seconds between each poll of the filesystem for "
         "model_config_file. If unset or set to zero, poll will be done exactly once and not periodically."),
    Flag("model_name", str, "default", "name of model (ignored if --model_config_file flag is set)"),
    Flag("model_base_path", str, "", "path to export (ignored if --model_config_file flag is set, otherwise required)"),
    Flag("max_num_load_retries", int, 5, "maximum number of times it retries loading a model after the first failure"),
    Flag("load_retry_interval_micros", int, 60_000_000, "The interval, in microseconds, between each servable load retry."),
    Flag("file_system_poll_wait_seconds", int, 1, "Interval in seconds between each poll of the filesystem for new "
         "model version. If set to zero poll will be exactly done once and not periodically. Setting this to negative "
         "value will disable polling entirely."),
    Flag("monitoring_config_file", str, "", "If non-empty, read an ascii MonitoringConfig protobuf from the supplied "
         "file name"),
    Flag("enable_model_warmup", bool, True, "Enables model warmup, which triggers lazy initializations (such as TF "
         "optimizations) at load time, to reduce first request latency."),
    Flag("num_request_iterations_for_warmup", int, 0, "Number of times a request is iterated during warmup replay."),
    Flag("prefer_tflite_model", bool, False, "EXPERIMENTAL; If true, prefer to load TF Lite model (model.tflite) "
         "over the TensorFlow model (saved_model.pb)."),
    Flag("saved_model_tags", str, "serve", "Comma-separated set of tags corresponding to the meta graph def to load "
         "from SavedModel."),
    Flag("grpc_channel_arguments", str, "", "A comma separated list of arguments to be passed to the grpc server. "
         "(e.g. grpc.max_connection_age_ms=2000)"),
    Flag("grpc_max_threads", int, 4 * CPUS, "Max grpc server threads to handle grpc messages."),
    Flag("tensorflow_session_parallelism", int, 0, "Number of threads to use for running a Tensorflow session "
         "(0 = auto)."),
    Flag("tensorflow_intra_op_parallelism", int, 0, "Number of threads to use to parallelize the execution of an "
         "individual op (0 = auto)."),
    Flag("tensorflow_inter_op_parallelism", int, 0, "Controls the number of operators that can be executed "
         "simultaneously (0 = auto)."),
    Flag("enable_signature_method_name_check", bool, False, "Accepted for compatibility; method names are not "
         "checked (TF Serving's default)."),
    Flag("bind_address", str, "127.0.0.1", "kiln-model-server only: address the gRPC and REST ports bind. Defaults "
         "to loopback; tensorflow_model_server binds 0.0.0.0. Pass 0.0.0.0 to match it."),
    Flag("kiln_server_processes", int, 1, "kiln-model-server only: number of server processes sharing the gRPC and "
         "REST ports (SO_REUSEPORT), each loading the same models, so that requests use more than one core. "
         "Metrics are per process; config reloads reach every process."),
    Flag("kiln_freeze_heap", bool, True, "kiln-model-server only: exclude the objects alive after each model load "
         "or unload from Python's garbage collections (gc.freeze), which would otherwise pause requests."),
    Flag("kiln_request_log_max_file_bytes", int, 64 * 1024 * 1024, "kiln-model-server only: a request log file "
         "(a model's logging_config) is closed and published once it holds this many bytes."),
    Flag("kiln_request_log_max_file_seconds", float, 60.0, "kiln-model-server only: a request log file is closed "
         "and published this many seconds after it was opened, even if not full."),
    Flag("kiln_request_log_queue_size", int, 4096, "kiln-model-server only: sampled requests waiting for the request "
         "log writer; when it is full, a record is dropped (and counted) instead of slowing the request."),
]  # fmt: skip

_TRUE, _FALSE = {"true", "1", "t", "yes"}, {"false", "0", "f", "no"}


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r}")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage plus the message; TF Serving tools expect one line
        sys.stderr.write(f"kiln-model-server: error: {message}\n")
        sys.exit(FLAG_ERROR_EXIT)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="kiln-model-server",
        description="A TensorFlow Serving stand-in that speaks tensorflow_model_server's REST and gRPC protocol. "
        "Flags, defaults and config files are tensorflow_model_server's; the one deliberate difference is that "
        "ports bind to --bind_address (loopback by default) instead of 0.0.0.0.",
        allow_abbrev=False,
    )
    for flag in FLAGS:
        if flag.kind is bool:
            parser.add_argument(
                f"--{flag.name}", type=_boolean, nargs="?", const=True, default=flag.default,
                help=f"{flag.help} (default: {str(flag.default).lower()})",
            )  # fmt: skip
            parser.add_argument(
                f"--no{flag.name}", dest=flag.name, action="store_false", help=argparse.SUPPRESS
            )
        else:
            parser.add_argument(
                f"--{flag.name}",
                type=flag.kind,
                default=flag.default,
                help=f"{flag.help} (default: {flag.default!r})",
            )
    parser.add_argument("--version", action="store_true", help="Display version")
    return parser


def parse_flags(argv: list[str]) -> argparse.Namespace:
    return _parser().parse_args(argv)


def fail(message: str) -> None:
    """One-line startup error and TF Serving's exit code."""
    sys.stderr.write(message.replace("\n", " ") + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: once TensorFlow is loaded, a normal interpreter exit takes seconds.
    os._exit(FLAG_ERROR_EXIT)
