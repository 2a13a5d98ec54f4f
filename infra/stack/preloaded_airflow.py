"""`python -m infra.stack.preloaded_airflow <airflow arguments>`: `airflow <arguments>` with the libraries kiln's
steps use already imported.

The LocalExecutor forks its workers from the scheduler and every task from a worker (so does a Celery worker's
pool), and a task process imports what its step needs: TensorFlow, tf_keras and MLflow cost about 5 s of CPU in
each of a pipeline's dozen tasks, most of a short task's run time. Imported once here, before Airflow forks
anything, every task inherits them (copy-on-write). Importing them starts no TensorFlow runtime, so a forked task
can still use TensorFlow. The embedded stack starts its scheduler and Celery worker this way.
"""

from __future__ import annotations

import importlib
import sys

import common  # noqa: F401 - TF_USE_LEGACY_KERAS before TensorFlow is imported

# What most steps import (tensorflow for the artifacts and the model, tf_keras for tfmot, mlflow for tracking and
# the registry; pandas and sklearn for the evaluator and the optimizer).
PRELOADED = ("tensorflow", "tf_keras", "mlflow", "pandas", "sklearn")


def main() -> None:
    for name in PRELOADED:
        importlib.import_module(name)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    airflow_main()


if __name__ == "__main__":
    main()
