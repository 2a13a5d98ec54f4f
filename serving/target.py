"""Where a TF Serving instance runs and which files it reads: all a deployer needs to ship versions to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServingTarget:
    grpc_address: str  # host:port of the gRPC ModelService / PredictionService
    rest_url: str  # http://host:port of the REST API
    model_base_path: Path | str  # models are served from <model_base_path>/<model name>/<version>/ (a path or URL)
    config_file: Path | str  # the server's --model_config_file (ModelServerConfig text proto; a path or URL)


@dataclass(frozen=True)
class RequestLog:
    """A served model's request logging, written into its models.config entry as TF Serving's logging_config."""

    path: str  # filename_prefix: the server writes <path>/<model>/<version>/*.tfrecord
    sampling_rate: float  # the share of requests logged, in [0, 1]
