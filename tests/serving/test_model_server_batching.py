"""--enable_batching: concurrent requests are really grouped, and a full queue answers 503 UNAVAILABLE."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.servers import wait_for

pytestmark = pytest.mark.slow
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


@pytest.fixture(scope="module")
def server(server_factory, test_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    test_models.install("half_plus_two", root / "hp", 1)
    # One open batch of at most 4 items that waits up to 5 s for company: grouping is deterministic.
    params = root / "batching.config"
    params.write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 5000000 }\n"
        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n"
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    return server_factory(
        f"--model_base_path={root / 'hp'}",
        "--model_name=hp",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        f"--monitoring_config_file={monitoring}",
    )


def histogram(client: httpx.Client, name: str) -> tuple[float, int]:
    text = client.get("/monitoring/prometheus/metrics").text
    prefix = f":tensorflow:serving:batching_session:{name}"
    total = re.search(rf"^{prefix}_sum\{{[^}}]*\}} (\S+)$", text, re.M)
    count = re.search(rf"^{prefix}_count\{{[^}}]*\}} (\S+)$", text, re.M)
    return (float(total.group(1)), int(count.group(1))) if total else (0.0, 0)


def test_full_queue_is_503_and_tasks_share_a_batch(server):
    with httpx.Client(base_url=server.rest_url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
        url = "/v1/models/hp:predict"
        first = pool.submit(client.post, url, json={"instances": [1.0, 2.0, 3.0]})
        wait_for(lambda: histogram(client, "input_batch_size")[1] == 1, message="first task queued")
        rejected = client.post(url, json={"instances": [4.0, 5.0, 6.0]})
        assert (rejected.status_code, rejected.json()) == (503, {"error": QUEUE_FULL})
        filler = client.post(url, json={"instances": [10.0]})  # fills the open batch, which then runs at once
        assert filler.json() == {"predictions": [7.0]}
        assert first.result(timeout=10).json() == {"predictions": [2.5, 3.0, 3.5]}
        assert histogram(client, "processed_batch_size") == (4.0, 1)


def test_concurrent_requests_are_grouped_into_one_batch(server):
    with httpx.Client(base_url=server.rest_url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
        before = histogram(client, "processed_batch_size")
        values = [float(i) for i in range(4)]
        responses = list(
            pool.map(lambda x: client.post("/v1/models/hp:predict", json={"instances": [x]}), values)
        )
        assert [r.json() for r in responses] == [{"predictions": [0.5 * x + 2]} for x in values]
        after = histogram(client, "processed_batch_size")
        # Four single-item requests ran as one batch of 4 (it closes as soon as it is full).
        assert (after[0] - before[0], after[1] - before[1]) == (4.0, 1)
