"""The Airflow side of kiln: the DAG factories (pipelines, drift monitors, serving sync), their schedules,
placement and Human-in-the-loop approval, the task links plugin, pipeline discovery and the deployment's
environment as the workers see it. Only DAG files and the Airflow plugin loader import the DAG builders."""
