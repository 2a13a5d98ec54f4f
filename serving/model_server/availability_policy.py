"""Which versions of a model to load and which to unload: TF Serving's AvailabilityPreservingPolicy, the
AspiredVersionPolicy tensorflow_model_server hard-codes. A new version is loaded (and warmed up) and becomes
AVAILABLE before an old one is unloaded, so a request never finds no version.
"""

from __future__ import annotations

from serving.model_server.loading import ModelRecord, State, VersionRecord


def versions_to_load(record: ModelRecord, aspired: dict[int, str]) -> list[int]:
    """Aspired versions never loaded or since unloaded, newest first; versions in ``record.failed`` are
    skipped (the caller clears a failure once its version stops being aspired)."""
    return [
        v for v in sorted(aspired, reverse=True)
        if v not in record.failed and (v not in record.versions or record.versions[v].state == State.END)
    ]  # fmt: skip


def versions_to_unload(record: ModelRecord, aspired: dict[int, str]) -> list[int]:
    """AVAILABLE versions no longer aspired, oldest first; the newest of them stays while versions are
    aspired but none of them is AVAILABLE yet."""
    ready = sorted(v for v, r in record.versions.items() if r.state == State.AVAILABLE and v not in aspired)
    aspired_ready = any(
        record.versions.get(v, VersionRecord(State.END)).state == State.AVAILABLE for v in aspired
    )
    return ready if (aspired_ready or not aspired) else ready[:-1]
