"""What the REST and gRPC front ends share: the model manager, the signature runner, the metrics and, with
--kiln_server_processes, the sibling processes."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from tensorflow_serving.apis import model_pb2

from serving.codec import ServingError
from serving.model_server.batching import BatchScheduler
from serving.model_server.manager import ModelManager
from serving.model_server.metrics import ServerMetrics
from serving.model_server.process_group import SiblingProcesses
from serving.model_server.request_logger import RequestLogger
from serving.model_server.servable import Servable


class ServingCore:
    def __init__(
        self,
        manager: ModelManager,
        metrics: ServerMetrics,
        batcher: BatchScheduler | None = None,
        siblings: SiblingProcesses | None = None,
        request_log: RequestLogger | None = None,
    ):
        self.manager = manager
        self.metrics = metrics
        self.batcher = batcher
        self.siblings = siblings  # the other processes of --kiln_server_processes, which config reloads reach
        # The models' logging_config in action; one that logs no model costs a dict lookup per request.
        self.request_log = request_log or RequestLogger(metrics)

    def resolve_spec(self, spec: model_pb2.ModelSpec) -> tuple[int, Servable]:
        if not spec.name:
            raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self.manager.resolve(spec.name, version=spec.version.value)
        if choice == "version_label":
            return self.manager.resolve(spec.name, label=spec.version_label)
        return self.manager.resolve(spec.name)

    def runner_for(self, model_name: str, api: str):
        """A Runner that goes through the batcher when batching is on and records runtime latency."""

        def run(
            servable: Servable, signature: str, inputs: Mapping[str, np.ndarray]
        ) -> dict[str, np.ndarray]:
            started = time.perf_counter()
            if self.batcher is not None:
                outputs = self.batcher.run(servable, signature, inputs)
            else:
                outputs = servable.run(signature, inputs)
            self.record_runtime(model_name, api, servable, started)
            return outputs

        return run

    def record_runtime(self, model_name: str, api: str, servable: Servable, started: float) -> None:
        self.metrics.runtime_latency.observe(
            model_name, api, servable.runtime, value=(time.perf_counter() - started) * 1e6
        )
