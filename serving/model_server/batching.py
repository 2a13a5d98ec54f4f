"""Server-side batching (--enable_batching), after TensorFlow's SharedBatchScheduler.

Concurrent requests for the same servable version and signature are queued and run together: a batch closes
when it reaches `max_batch_size` or when `batch_timeout_micros` has passed since its first task; with a
timeout of 0 a batch runs as soon as a batch thread is free, so tasks pile up while all threads are busy.
`num_batch_threads` threads serve all queues. A queue holds at most `max_enqueued_batches` batches (the open
one included); a task that would need one more is rejected with UNAVAILABLE, as TF Serving does.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future

import numpy as np

from serving.codec import ServingError
from serving.model_server.config import BatchingOptions
from serving.model_server.metrics import ServerMetrics
from serving.model_server.servable import Servable

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
THREAD_POOL_LABEL = "batch_threads"


class _Task:
    __slots__ = ("inputs", "size", "future", "enqueued")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int):
        self.inputs, self.size = inputs, size
        self.future: Future = Future()
        self.enqueued = time.perf_counter()


class _Batch:
    __slots__ = ("tasks", "size", "opened", "closed")

    def __init__(self):
        self.tasks: list[_Task] = []
        self.size = 0
        self.opened = time.perf_counter()
        self.closed = False


class _Queue:
    def __init__(self, servable: Servable, signature: str):
        self.servable, self.signature = servable, signature
        self.batches: deque[_Batch] = deque()


def _task_size(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {value.shape[0] if value.ndim else -1 for value in inputs.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise ServingError(
            "INVALID_ARGUMENT", "Batching session Run() input tensors must have equal 0th-dimension size"
        )
    return sizes.pop()


class BatchScheduler:
    def __init__(self, options: BatchingOptions, metrics: ServerMetrics):
        self._options = options
        self._metrics = metrics
        self._timeout = options.batch_timeout_micros / 1e6
        self._queues: weakref.WeakKeyDictionary[Servable, dict[str, _Queue]] = weakref.WeakKeyDictionary()
        self._ready = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-thread-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(
        self, servable: Servable, signature: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """A Runner: blocks until the batch holding this task has run, returns this task's slice."""
        return self.submit(servable, signature, inputs).result()

    def submit(self, servable: Servable, signature: str, inputs: Mapping[str, np.ndarray]) -> Future:
        size = _task_size(inputs)
        limit = self._options.max_batch_size
        if size > limit:
            raise ServingError(
                "INVALID_ARGUMENT", f"Task size {size} is larger than maximum input batch size {limit}"
            )
        task = _Task(inputs, size)
        self._metrics.input_batch_size.observe(THREAD_POOL_LABEL, value=size)
        with self._ready:
            queue = self._queues.setdefault(servable, {}).setdefault(signature, _Queue(servable, signature))
            batch = queue.batches[-1] if queue.batches and not queue.batches[-1].closed else None
            room = limit - batch.size if batch is not None else 0
            if size > room + (self._options.max_enqueued_batches - len(queue.batches)) * limit:
                raise ServingError("UNAVAILABLE", QUEUE_FULL)
            if batch is None or size > room:
                if batch is not None:
                    batch.closed = True
                batch = _Batch()
                queue.batches.append(batch)
            batch.tasks.append(task)
            batch.size += size
            if batch.size >= limit:
                batch.closed = True
            self._ready.notify()
        return task.future

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def _next_batch(self) -> tuple[_Queue, _Batch] | None:
        with self._ready:
            while not self._stopped:
                now = time.perf_counter()
                wait = None
                for queues in list(self._queues.values()):
                    for queue in queues.values():
                        if not queue.batches:
                            continue
                        batch = queue.batches[0]
                        due = batch.opened + self._timeout
                        if batch.closed or now >= due:
                            queue.batches.popleft()
                            return queue, batch
                        wait = due - now if wait is None else min(wait, due - now)
                self._ready.wait(wait)
        return None

    def _work(self) -> None:
        while (item := self._next_batch()) is not None:
            queue, batch = item
            self._process(queue, batch)

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        started = time.perf_counter()
        for task in batch.tasks:
            self._metrics.batch_queuing_latency.observe(
                THREAD_POOL_LABEL, value=(started - task.enqueued) * 1e6
            )
        try:
            merged, padded = self._merge(batch)
            self._metrics.processed_batch_size.observe(THREAD_POOL_LABEL, value=batch.size + padded)
            outputs = queue.servable.run(queue.signature, merged)
            offset = 0
            for task in batch.tasks:
                part = {}
                for key, value in outputs.items():
                    if value.ndim == 0 or value.shape[0] != batch.size + padded:
                        raise ServingError(
                            "FAILED_PRECONDITION",
                            "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                            "sizes of the input tensors",
                        )
                    part[key] = value[offset : offset + task.size]
                offset += task.size
                task.future.set_result(part)
        except Exception as exc:  # noqa: BLE001 - every task of a failed batch gets the batch's error
            for task in batch.tasks:
                if not task.future.done():
                    task.future.set_exception(exc)

    def _merge(self, batch: _Batch) -> tuple[dict[str, np.ndarray], int]:
        allowed = self._options.allowed_batch_sizes
        target = next((s for s in allowed if s >= batch.size), batch.size) if allowed else batch.size
        padded = target - batch.size
        merged = {}
        for key in batch.tasks[0].inputs:
            parts = [task.inputs[key] for task in batch.tasks]
            if padded:
                parts.append(np.repeat(parts[0][:1], padded, axis=0))
            try:
                merged[key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            except (ValueError, KeyError) as exc:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Batching session could not merge input {key}: {exc}"
                ) from exc
        return merged, padded
