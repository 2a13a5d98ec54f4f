"""A steady client load on one label of a served model, over REST and gRPC, counting every failure."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SteadyLoad:
    """Send one request after another to `model@label` until stopped; `errors` lists every failure."""

    rest_url: str
    grpc_address: str
    model: str
    instance: dict[str, Any]  # one row by feature name (REST) and as a batch of one (gRPC)
    label: str = "stable"
    requests: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        import httpx
        import numpy as np

        from serving.client import GrpcPredictor

        batch = {k: np.asarray([v], dtype=np.float32 if isinstance(v, float | list) else None)
                 for k, v in self.instance.items()}
        url = f"{self.rest_url}/v1/models/{self.model}/labels/{self.label}:predict"
        with httpx.Client(timeout=30) as rest, GrpcPredictor(self.grpc_address, timeout=30) as grpc:
            while not self._stop.is_set():
                self.requests += 2
                try:
                    response = rest.post(url, json={"instances": [self.instance]})
                    if response.status_code != 200:
                        self.errors.append(f"REST {response.status_code}: {response.text[:200]}")
                    grpc.predict(self.model, batch, label=self.label)
                except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
