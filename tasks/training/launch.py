"""Which launcher runs a step's workers (`train.launcher`), and where those workers write: the one place that
knows both launchers, so neither imports the other."""

from __future__ import annotations

from common import storage
from tasks.config import TrainConfig
from tasks.context import StepContext
from tasks.training.k8s_launcher import KubernetesLauncher
from tasks.training.launcher import LocalProcessLauncher, WorkerLauncher


def launcher_for(train: TrainConfig, ctx: StepContext) -> WorkerLauncher:
    """The launcher `train.launcher` names, for the step `ctx` is given to."""
    if train.launcher == "kubernetes":
        assert train.kubernetes is not None  # TrainConfig's validator
        return KubernetesLauncher(train.kubernetes, work_uri=ctx.work_uri(), name_prefix=f"kiln-{ctx.pipeline}-{ctx.step}",
                                  labels={"kiln.dev/pipeline": ctx.pipeline.strip("-_")[:63], "kiln.dev/step": ctx.step})
    return LocalProcessLauncher(ctx.work_dir())


def remote_work_uri(train: TrainConfig, ctx: StepContext) -> str | None:
    """Where the workers of one step write when they share only the artifact store with it: the step's
    work folder on object storage, for `train.launcher: kubernetes` on a remote artifact root. None
    otherwise: the local launcher's workers get local paths, exactly as always (and the Kubernetes
    launcher refuses a local artifact root in one line)."""
    uri = ctx.work_uri()
    return uri if train.launcher == "kubernetes" and not storage.is_local(uri) else None
