"""kiln pipeline steps: plain functions, no Airflow imports."""

import common  # noqa: F401 - first: TF_USE_LEGACY_KERAS before any submodule imports TensorFlow
