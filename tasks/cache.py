"""Step caching: a step whose cache key matches an earlier successful run's reuses that run's outputs.

The key is a sha256 over what decides a step's outputs:
* the step's code: its executor module's source and kiln's version; for `train`, also the user's model code
  (`train.model`: the file's or module's source; a built-in's module);
* its config sections after the trigger's overrides, less the fields that say where or how long it runs
  (`NOT_IN_KEY`: the data engine, timeouts, restarts);
* its inputs' fingerprints (kind, properties and the sha256 of their files, from their manifests), so a step
  whose input was re-made identical still hits;
* for `ingest`, the data it reads: each file's sha256 when local, its ETag or version (fsspec's `ukey`) on
  object storage.

Nothing is copied: a hit returns the earlier outputs' URIs, and the index entry names the run that made them.
The index lives beside the runs (`{artifact_root}/{pipeline}/.cache/{step}/{key}.json`), one file per key
replaced whole, plus the step's newest entry (`latest.json`), from which a miss says what changed. Two runs
that miss together both compute and publish their own outputs (each publication is atomic) and the later
entry wins. Register, infra-validate, push, verify, promote and the services are never cached: they act on
the world (the registry, the server), and evaluate reads the champion as it is now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from common import storage
from tasks.artifacts.base import ArtifactError, ArtifactType, read_manifest
from tasks.code_digest import model_code_digest, module_digest, uri_digest
from tasks.config import CACHED_STEPS, PipelineConfig
from tasks.context import StepContext
from tasks.registry import StepSpec

log = logging.getLogger(__name__)

RESULT_KEY = "cache"  # a cached step's result holds its decision under this key (a hit, or why it ran)
INDEX = ".cache"
LATEST = "latest.json"
# Fields that change where or how long a step runs, not what it makes.
NOT_IN_KEY = frozenset({"data.engine", "data.dask_scheduler", "data.engine_workers", "data.partition_bytes",
                        "data.memory_budget", "train.timeout_minutes", "train.worker_timeout_seconds",
                        "train.max_restarts", "optimize.timeout_minutes"})
SHOWN_CHANGES = 3
_AGE = re.compile(r"^([0-9]+)(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def max_age(text: str | None) -> timedelta | None:
    if text is None:
        return None
    found = _AGE.match(text)
    if found is None:  # the config's pattern checked it already
        raise ValueError(f"max_age {text!r}: use a number and s, m, h, d or w (7d)")
    return timedelta(**{_UNITS[found[2]]: int(found[1])})


@dataclass
class Decision:
    """Whether the step runs, and why: what `kiln run --json` shows as `cache: {STEP: ...}`."""

    hit: bool
    key: str
    reason: str
    from_run: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # a hit's earlier outputs
    parts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"hit": self.hit, "key": self.key[:16], "from_run": self.from_run, "reason": self.reason}


def cacheable(step: str) -> bool:
    return step in CACHED_STEPS


def decide(ctx: StepContext, config: PipelineConfig, spec: StepSpec, inputs: dict[str, ArtifactType[Any] | None]) -> Decision:
    """Look the step up in the index: a hit names the earlier outputs; a miss says why."""
    policy, step = config.cache, spec.name
    parts = key_parts(config, spec, inputs)
    if step == "train" and config.tune is not None:  # the values train takes: the study's best trial's
        from tasks.tuning import outcome

        parts["tune"] = outcome(ctx, config.tune, config.train, inputs["examples"], inputs["transform"]).best_params
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    step_policy = policy.steps.get(step)
    if not policy.enabled:
        return Decision(False, key, "cache off", parts=parts)
    if step_policy is not None and not step_policy.enabled:
        return Decision(False, key, f"cache off for {step} (cache.steps.{step})", parts=parts)
    if step in policy.rerun:
        return Decision(False, key, f"re-run asked (cache.rerun: {step})", parts=parts)
    entry = _read(_entry_uri(ctx, step, key))
    if entry is None:
        return Decision(False, key, _what_changed(_read(_entry_uri(ctx, step, LATEST, suffix="")), parts), parts=parts)
    oldest = max_age(step_policy.max_age if step_policy and step_policy.max_age else policy.max_age)
    made = datetime.fromisoformat(entry["created"])
    if oldest is not None and datetime.now(UTC) - made > oldest:
        return Decision(False, key, f"the earlier output (run {entry['run_id']}) is older than max_age", parts=parts)
    for name, uri in entry["outputs"].items():
        try:
            read_manifest(uri)
        except (ArtifactError, OSError):
            return Decision(False, key, f"the earlier output {name} (run {entry['run_id']}) is gone", parts=parts)
    return Decision(True, key, f"cached (run {entry['run_id']})", entry["run_id"], dict(entry["outputs"]), parts)


def record(ctx: StepContext, step: str, decision: Decision, outputs: dict[str, str]) -> None:
    """Index the step's published outputs under its key (and as the step's newest entry)."""
    entry = {"key": decision.key, "step": step, "run_id": ctx.run_id, "outputs": outputs,
             "created": datetime.now(UTC).isoformat(), "parts": decision.parts}
    text = json.dumps(entry, indent=1, sort_keys=True)
    storage.write_text(_entry_uri(ctx, step, decision.key), text)
    storage.write_text(_entry_uri(ctx, step, LATEST, suffix=""), text)


def key_parts(config: PipelineConfig, spec: StepSpec, inputs: dict[str, ArtifactType[Any] | None]) -> dict[str, Any]:
    step, sections = spec.name, spec.config.of(config)
    fields = {k: v for k, v in _dotted(sections.model_dump(mode="json")).items() if k not in NOT_IN_KEY}
    # The snapshot carries its own copy of these files (a path per run): what counts is their content.
    if fields.get("data.schema_path"):
        fields["data.schema_path"] = f"sha256:{uri_digest(fields['data.schema_path'])[:12]}"
    if "train.model" in fields:
        fields["train.model"] = _model_name(fields["train.model"])
    parts: dict[str, Any] = {
        "code": {"kiln": _kiln_version(), "module": module_digest(spec.executor.partition(":")[0])},
        "config": fields,
        "inputs": {name: _fingerprint(artifact) for name, artifact in sorted(inputs.items())},
    }
    if step == "ingest":
        parts["data"] = source_digest(config.data.source)
    if step == "train":
        parts["model_code"] = model_code_digest(config.train.model)
    return parts


def source_digest(source: str) -> str:
    """What identifies the data a source names: each file's name (relative to the source) and digest."""
    from tasks.data.partitions import source_files

    files = source_files(source)
    root = source.rstrip("/") + "/"
    lines = []
    for file in files:
        name = file.removeprefix(root) if file.startswith(root) else file.rsplit("/", 1)[-1]
        lines.append(f"{uri_digest(file)}  {name}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _model_name(ref: str) -> str:
    """`train.model` without the folder of a file reference (the run's copy of it)."""
    from tasks.models.contract import is_file_reference

    if not is_file_reference(ref):
        return ref
    location, _, function = ref.rpartition(":")
    return f"{location.rsplit('/', 1)[-1]}:{function}"


def _what_changed(latest: dict[str, Any] | None, parts: dict[str, Any]) -> str:
    if latest is None:
        return "no earlier output"
    before = latest.get("parts", {})
    # An input that changed comes first: it is why the step after one that re-ran runs again.
    inputs = [name for name, value in parts["inputs"].items() if before.get("inputs", {}).get(name) != value]
    if inputs:
        return f"re-ran: input {', '.join(inputs)} changed"
    old, new = before.get("config", {}), parts["config"]
    changed = [f"{k} changed {_shown(old.get(k))} → {_shown(new.get(k))}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    if changed:
        more = f" and {len(changed) - SHOWN_CHANGES} more" if len(changed) > SHOWN_CHANGES else ""
        return "re-ran: " + ", ".join(changed[:SHOWN_CHANGES]) + more
    if before.get("data") != parts.get("data"):
        return "re-ran: the data changed"
    if before.get("tune") != parts.get("tune"):
        return "re-ran: the tuned values changed"
    if before.get("model_code") != parts.get("model_code"):
        return "re-ran: the model code (train.model) changed"
    if before.get("code") != parts["code"]:
        return "re-ran: the step's code changed"
    return "re-ran: no earlier output with this key"


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value) if not isinstance(value, str) else value


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _fingerprint(artifact: ArtifactType[Any] | None) -> str | None:
    if artifact is None:
        return None
    properties = artifact.properties.model_dump_json()
    return hashlib.sha256(f"{artifact.KIND}\n{properties}\n{artifact.fingerprint}".encode()).hexdigest()


def _kiln_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiln")
    except PackageNotFoundError:
        return "unknown"


def _entry_uri(ctx: StepContext, step: str, key: str, suffix: str = ".json") -> str:
    return "/".join([ctx.artifact_root.rstrip("/"), ctx.pipeline, INDEX, step, f"{key}{suffix}"])


def _read(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(uri))
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@dataclass(frozen=True)
class Entry:
    """One indexed output set of a step: `kiln cache ls` shows it, `kiln cache prune` may remove it."""

    step: str
    key: str
    run_id: str
    created: datetime
    outputs: dict[str, str]
    uri: str  # the index file

    @property
    def present(self) -> bool:
        """Every output still holds a complete artifact."""
        for uri in self.outputs.values():
            try:
                read_manifest(uri)
            except (ArtifactError, OSError):
                return False
        return True


def entries(artifact_root: str, pipeline: str) -> list[Entry]:
    """The pipeline's index, step by step in run order, newest first within a step."""
    index = "/".join([artifact_root.rstrip("/"), pipeline, INDEX])
    try:
        files = storage.listing(index)
    except FileNotFoundError:
        return []
    found = []
    for name in files:
        step, _, file = name.partition("/")
        if file == LATEST or not file.endswith(".json"):
            continue
        uri = f"{index}/{name}"
        entry = _read(uri)
        if entry is None:
            continue
        found.append(Entry(step, entry["key"], entry["run_id"], datetime.fromisoformat(entry["created"]),
                           entry["outputs"], uri))
    order = {step: i for i, step in enumerate(CACHED_STEPS)}
    return sorted(found, key=lambda e: (order.get(e.step, len(order)), -e.created.timestamp()))


def prune(artifact_root: str, pipeline: str, older_than: timedelta | None = None) -> list[Entry]:
    """Remove the index entries whose outputs are gone, or older than `older_than`; the outputs themselves stay
    (they belong to their runs). Returns what was removed."""
    now = datetime.now(UTC)
    removed = []
    for entry in entries(artifact_root, pipeline):
        if (older_than is not None and now - entry.created > older_than) or not entry.present:
            storage.remove_file(entry.uri)
            removed.append(entry)
    return removed
