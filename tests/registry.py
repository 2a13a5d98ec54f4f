"""Stand-in model versions in MLflow, registered the way kiln's register step logs them (`tf_serving/`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tests.stand_in_models import save_pixels_model


def register_stand_ins(tracking_uri: str, name: str, root: Path, versions: Iterable[int],
                       corrupt: Iterable[int] = (), unblessed: Iterable[int] = ()) -> None:
    """Versions of `name` whose SavedModels are stand-in digits classifiers (seeded by the version number);
    a `corrupt` one registers but cannot load, an `unblessed` one is tagged `blessed=false`."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    client.create_registered_model(name)
    mlflow.set_tracking_uri(tracking_uri)
    # An experiment of its own: the default one keeps its artifacts in ./mlruns of the working directory.
    experiment = client.create_experiment(f"{name}-stand-ins", artifact_location=(root / "mlruns").as_uri())
    for version in versions:
        folder = root / f"{name}-v{version}"
        save_pixels_model(folder, seed=version)
        if version in corrupt:
            for variables in (folder / "variables").glob("variables.data*"):
                variables.write_bytes(b"corrupt")
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifacts(str(folder), artifact_path="tf_serving")
        client.create_model_version(name, f"runs:/{run.info.run_id}/tf_serving", run_id=run.info.run_id,
                                    tags={"blessed": "false" if version in unblessed else "true"})
