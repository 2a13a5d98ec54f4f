"""Operator extra links on kiln's tasks: the step's MLflow run, the registered model version, the
served model's status. Airflow plugin, registered through the `airflow.plugins` entry point.

A step task pushes the URLs as XCom `kiln_links` ({link name: URL}); at the end of the task Airflow
asks each link for its URL (in the worker) and stores it as the link's own XCom, which the UI shows
as a button on the task. A task without such a URL shows none.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from tasks.cache import cacheable

XCOM_KEY = "kiln_links"


class _KilnLink(BaseOperatorLink):
    name = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        try:
            links = ti_key.xcom_pull(task_ids=ti_key.task_id, key=XCOM_KEY) or {}
        except Exception:  # noqa: BLE001 - a missing link must never fail the task
            return ""
        return links.get(self.name, "")


class MlflowRunLink(_KilnLink):
    name = "MLflow run"


class ModelVersionLink(_KilnLink):
    name = "MLflow model version"


class ServedModelLink(_KilnLink):
    name = "Served model status"


class CachedFromLink(_KilnLink):
    name = "Cached from (MLflow run)"


def links_for(spec: Any) -> tuple[BaseOperatorLink, ...]:
    """The buttons a step's task gets: only those whose URL it can produce (see tasks.links)."""
    served = {"pushed", "verification", "promotion"} & set(spec.outputs)
    chosen: list[BaseOperatorLink] = []
    if spec.tracked:
        chosen.append(MlflowRunLink())
        if cacheable(spec.name):
            chosen.append(CachedFromLink())
    if {"registered", "pushed", "promotion"} & set(spec.outputs) or spec.role == "service":  # service: the champion
        chosen.append(ModelVersionLink())
    if served:
        chosen.append(ServedModelLink())
    return tuple(chosen)


class KilnLinksPlugin(AirflowPlugin):
    name = "kiln_links"
    operator_extra_links = [MlflowRunLink(), ModelVersionLink(), ServedModelLink(), CachedFromLink()]
