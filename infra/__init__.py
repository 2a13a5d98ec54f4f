"""How kiln runs: the `kiln` CLI, the embedded stack, the Airflow client and local process plumbing.

Operator tooling only; the pipeline library lives in `tasks/`. Modules here may import `tasks`, never
the other way round, except `infra.processes`, which the training launcher shares.
"""
