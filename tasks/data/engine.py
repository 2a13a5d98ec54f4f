"""Where the data steps' partitions run: in the step's own process (`data.engine: local`, the default), or on
a Dask cluster (`data.engine: dask`): the one at `data.dask_scheduler`, else a LocalCluster of
`data.engine_workers` processes started for the step. The step code is the same either way: it plans
partitions, maps a plain function over them and merges what comes back (mergeable profiles and sketches).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from tasks.config import DataConfig
from tasks.data import images, partitions

log = logging.getLogger(__name__)
Item = TypeVar("Item")


class Engine(Protocol):
    name: str
    remote: bool  # workers in other processes: what they write must go to a URL they can all reach

    def plan(self, source: str, format: str | None,
             image_shape: images.Shape | None = None) -> list[partitions.Partition]: ...

    def map(self, function: Callable[..., Any], items: Sequence[Item], *args: Any) -> list[Any]: ...


class InProcess:
    """The whole source as one streamed partition, in this process."""

    name, remote = "local", False

    def plan(self, source: str, format: str | None,
             image_shape: images.Shape | None = None) -> list[partitions.Partition]:
        return partitions.plan(source, format, partitions=1, image_shape=image_shape)

    def map(self, function: Callable[..., Any], items: Sequence[Item], *args: Any) -> list[Any]:
        return [function(item, *args) for item in items]


class OnDask:
    """Partitions of `partition_bytes` (at least one per worker), one task each."""

    name, remote = "dask", True

    def __init__(self, client: Any, partition_bytes: int):
        self.client, self.partition_bytes = client, partition_bytes

    def plan(self, source: str, format: str | None,
             image_shape: images.Shape | None = None) -> list[partitions.Partition]:
        workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        planned = partitions.plan(source, format, partition_bytes=self.partition_bytes, image_shape=image_shape)
        if len(planned) < workers:
            planned = partitions.plan(source, format, partitions=workers, image_shape=image_shape)
        return planned

    def map(self, function: Callable[..., Any], items: Sequence[Item], *args: Any) -> list[Any]:
        futures = self.client.map(function, list(items), *[[arg] * len(items) for arg in args], pure=False)
        return self.client.gather(futures)


@contextmanager
def engine_for(config: DataConfig, step: str) -> Iterator[Engine]:
    if config.engine == "local":
        yield InProcess()
        return
    from distributed import Client, LocalCluster

    if config.dask_scheduler:
        client = Client(config.dask_scheduler, timeout="30s")
        log.info("%s: on the Dask cluster at %s (%d workers)", step, config.dask_scheduler,
                 len(client.scheduler_info().get("workers", {})))
        try:
            yield OnDask(client, int(config.partition_bytes))
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=config.engine_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    log.info("%s: on a local Dask cluster of %d worker processes", step, config.engine_workers)
    try:
        yield OnDask(client, int(config.partition_bytes))
    finally:
        client.close()
        cluster.close()
