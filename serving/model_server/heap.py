"""Keeps Python's full garbage collections out of the request path.

TensorFlow builds a heap of several hundred thousand container objects at import and model load. A full
(generation 2) collection walks all of them: 100-300 ms with the GIL held, triggered by whatever request
happens to allocate the container that tips the counters (nested JSON lists do so often). `gc.freeze()` moves
every object alive at that moment into the permanent generation, which collections skip. So the server
freezes once its models are loaded and again after every load or unload; it unfreezes first, so that the
cycles an unloaded model leaves behind are collected once (off the request path) instead of leaking.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("kiln.model_server")


def freeze_heap() -> None:
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info(
        "Froze %d heap objects out of garbage collection in %.0f ms",
        gc.get_freeze_count(), (time.perf_counter() - started) * 1e3,
    )  # fmt: skip
