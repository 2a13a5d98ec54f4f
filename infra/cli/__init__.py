"""The `kiln` command (`infra.cli.app`) and what only it uses: the Airflow REST client, run following and
summaries, kiln init, demo data, data spans, lineage, serving operations and approval answers."""
