"""Which launcher runs a step's workers (`train.launcher`), and where those workers write: the one place that
knows both launchers, so neither imports the other."""

from __future__ import annotations

from common import storage
from tasks.config import TrainConfig
from tasks.context import StepContext
from tasks.training.k8s_launcher import KubernetesLauncher
from tasks.training.launcher import LocalProcessLauncher, WorkerLauncher


def launcher_for(train: TrainConfig, ctx: StepContext, step: str) -> WorkerLauncher:
    """The launcher `train.launcher` names, for one step of one run."""
    if train.launcher == "kubernetes":
        assert train.kubernetes is not None  # TrainConfig's validator
        return KubernetesLauncher(train.kubernetes, work_uri=ctx.output_uri(step, ".work"),
                                  name_prefix=f"kiln-{ctx.pipeline}-{step}",
                                  labels={"kiln.dev/pipeline": ctx.pipeline.strip("-_")[:63], "kiln.dev/step": step})
    return LocalProcessLauncher(ctx.work_dir(step))


def remote_work_uri(train: TrainConfig, ctx: StepContext, step: str) -> str | None:
    """Where the workers of one step write when they share only the artifact store with it: the step's
    work folder on object storage, for `train.launcher: kubernetes` on a remote artifact root. None
    otherwise: the local launcher's workers get local paths, exactly as always (and the Kubernetes
    launcher refuses a local artifact root in one line)."""
    uri = ctx.output_uri(step, ".work")
    return uri if train.launcher == "kubernetes" and not storage.is_local(uri) else None
