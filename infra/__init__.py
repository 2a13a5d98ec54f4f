"""How kiln runs: the `kiln` CLI, the embedded stack, the Airflow client and the fleet's configuration.

Operator tooling only; the pipeline library lives in `tasks/`. Modules here may import `tasks`, `serving` and
`common`, never the other way round (import-linter's layers contract in pyproject.toml).
"""

from pathlib import Path

import common  # noqa: F401 - first: TF_USE_LEGACY_KERAS before any module here loads TensorFlow

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or the image's copy): dags/, pipelines/
DEFAULT_HOME = REPO_ROOT / ".kiln"  # KILN_HOME when it is not set
