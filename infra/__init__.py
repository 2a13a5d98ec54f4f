"""How kiln runs: the `kiln` CLI, the embedded stack, the Airflow client and the fleet's configuration.

Operator tooling only; the pipeline library lives in `tasks/`. Modules here may import `tasks`, `serving` and
`common`, never the other way round (import-linter's layers contract in pyproject.toml).
"""

import common  # noqa: F401 - first: TF_USE_LEGACY_KERAS before any module here loads TensorFlow
