"""`InfraBlessing`: the candidate loaded in a sandbox model server and answered over REST and gRPC in
time (TFX's InfraValidator). No files, only what was measured and why it is, or is not, blessed."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties


class InfraBlessingProperties(Properties):
    blessed: bool
    reason: str
    server: str  # the sandbox: the binary that was started, or the address of a configured one
    load_seconds: float | None = None  # from the reload request to AVAILABLE (warmup included)
    requests: int = 0  # batch-1 requests sent (REST and gRPC)
    errors: int = 0
    rest_p50_ms: float | None = None
    rest_p99_ms: float | None = None
    grpc_p50_ms: float | None = None
    grpc_p99_ms: float | None = None
    max_p99_ms: float | None = None

    @property
    def first_failure(self) -> str | None:
        return None if self.blessed else self.reason


class InfraBlessing(ArtifactType[InfraBlessingProperties]):
    KIND = "InfraBlessing"
    Properties = InfraBlessingProperties
