"""The REST handler threads: results, errors and timeouts come back to the awaiting request."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.model_server.handler_threads import HandlerThreads


@pytest.fixture
def threads():
    pool = HandlerThreads(2, name="test")
    yield pool
    pool.shutdown()


def test_a_call_runs_on_a_handler_thread_and_returns_its_result(threads):
    async def main():
        return await threads.run(lambda: threading.current_thread().name, timeout=5)

    assert asyncio.run(main()).startswith("test_")


def test_an_exception_reaches_the_request(threads):
    def fail():
        raise ValueError("bad input")

    async def main():
        await threads.run(fail, timeout=None)

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(main())


def test_a_call_past_its_timeout_raises_timeout_error_and_the_late_result_is_dropped(threads):
    release = threading.Event()
    finished = threading.Event()

    def slow():
        release.wait(5)
        finished.set()
        return "late"

    async def main():
        with pytest.raises(TimeoutError):
            await threads.run(slow, timeout=0.05)
        release.set()
        await asyncio.get_running_loop().run_in_executor(None, finished.wait, 5)
        await asyncio.sleep(0.05)  # the late result is settled on the loop, into a future already done
        return await threads.run(lambda: "next", timeout=5)

    assert asyncio.run(main()) == "next"


def test_calls_run_side_by_side(threads):
    both = threading.Barrier(2, timeout=5)

    async def main():
        return await asyncio.gather(*(threads.run(both.wait, timeout=5) for _ in range(2)))

    assert sorted(asyncio.run(main())) == [0, 1]
