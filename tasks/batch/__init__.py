"""Batch inference, TFX's BulkInferrer: a data set scored with a registered version's served folder.

`plan` resolves the version (an alias or a number; blessed unless a reason is given), checks the data against the
version's contract, cuts it into partitions and opens the job's MLflow run; `score_shard` scores a shard's
partitions in-process with the same bytes the server runs and stages one output file per partition; `commit`
moves the staged files into the output folder, writes `_SUCCESS` and closes the run. `kiln predict` runs the three
in one process; `kiln_batch_<pipeline>` runs them as Airflow tasks, the shards mapped over the executors.
"""
