"""Many threads / tasks through one client and one breaker: never serialised, never mixed up."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    ClientConfig,
    ServiceResponseError,
    ServiceUnavailableError,
    testing,
)

BASE = "http://conc.test"
THREADS = 16
TASKS = 100


def _expected(i: int) -> int | None:
    """Odd callers get a 404 of their own, callers divisible by 4 a 503 first, then 200."""
    return None if i % 2 else i


@pytest.mark.facade_sync
def test_16_threads_are_not_serialised_and_get_their_own_results() -> None:
    import responses

    from commclient import SyncServiceClient

    barrier = threading.Barrier(THREADS, timeout=10)
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        i = int(request.url.rsplit("/", 1)[1])
        with lock:
            seen[i] = seen.get(i, 0) + 1
            first = seen[i] == 1
        if first:
            # Every thread must be inside a request at once: a lock held across
            # the call (pybreaker's call()) would make this barrier time out.
            barrier.wait()
            if i % 4 == 0:
                return 503, {}, "{}"
        if i % 2:
            return 404, {}, f'{{"detail": "missing {i}"}}'
        return 200, {}, f'{{"i": {i}}}'

    config = ClientConfig(circuit_breaker_fail_max=1000)
    with responses.RequestsMock() as mock, testing.no_wait():
        mock.add_callback("GET", re.compile(BASE + r"/items/\d+"), callback=reply)
        client = SyncServiceClient(
            BASE,
            service_name="threads",
            target_service="conc",
            config=config,
            registry=CollectorRegistry(),
        )

        def one(i: int) -> Any:
            try:
                return client.get("/items/{i}", path_params={"i": i})
            except ServiceResponseError as error:
                return error

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(one, range(THREADS)))
        client.close()
    for i, result in enumerate(results):
        if _expected(i) is None:
            assert isinstance(result, ServiceResponseError)
            assert result.status_code == 404
            assert result.detail == f"missing {i}"
            assert result.url == f"{BASE}/items/{i}"
        else:
            assert result == {"i": i}


@pytest.mark.facade_async
def test_100_tasks_are_not_serialised_and_get_their_own_results() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    async def main() -> list[Any]:
        arrived = 0
        all_in = asyncio.Event()
        attempts: dict[int, int] = {}

        async def reply(request: httpx.Request) -> httpx.Response:
            nonlocal arrived
            i = int(str(request.url).rsplit("/", 1)[1])
            attempts[i] = attempts.get(i, 0) + 1
            if attempts[i] == 1:
                arrived += 1
                if arrived == TASKS:
                    all_in.set()
                # Every task must be in flight at once, else this wait times out.
                await asyncio.wait_for(all_in.wait(), timeout=10)
                if i % 4 == 0:
                    return httpx.Response(503, json={})
            if i % 2:
                return httpx.Response(404, json={"detail": f"missing {i}"})
            return httpx.Response(200, json={"i": i})

        config = ClientConfig(circuit_breaker_fail_max=1000, retry_budget_max_tokens=1000)
        with respx.mock() as mock, testing.no_wait():
            mock.get(url__regex=BASE + r"/items/\d+").mock(side_effect=reply)
            async with AsyncServiceClient(
                BASE,
                service_name="tasks",
                target_service="conc",
                config=config,
                registry=CollectorRegistry(),
            ) as client:

                async def one(i: int) -> Any:
                    try:
                        return await client.get("/items/{i}", path_params={"i": i})
                    except ServiceResponseError as error:
                        return error

                return await asyncio.gather(*(one(i) for i in range(TASKS)))

    results = asyncio.run(main())
    for i, result in enumerate(results):
        if _expected(i) is None:
            assert isinstance(result, ServiceResponseError)
            assert (result.status_code, result.detail) == (404, f"missing {i}")
        else:
            assert result == {"i": i}


@pytest.mark.facade_async
def test_async_failures_are_counted_by_the_breaker() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    async def main() -> list[BaseException]:
        with respx.mock() as mock, testing.no_wait():
            route = mock.get(BASE + "/down").mock(return_value=httpx.Response(503))
            client = AsyncServiceClient(
                BASE,
                service_name="async-fail",
                target_service="conc",
                config=ClientConfig(max_retries=1, circuit_breaker_fail_max=5),
                registry=CollectorRegistry(),
            )
            errors = []
            for _ in range(8):
                try:
                    await client.get("/down")
                except (ServiceResponseError, ServiceUnavailableError) as error:
                    errors.append(error)
            await client.close()
            assert route.call_count == 5
            return errors

    errors = asyncio.run(main())
    assert [type(e) for e in errors] == [ServiceResponseError] * 5 + [ServiceUnavailableError] * 3
    assert testing.breaker_state("async-fail", "conc") == "open"


@pytest.mark.facade_async
def test_a_cancelled_task_is_not_a_failure_and_frees_the_probe() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    async def main() -> None:
        entered = asyncio.Event()

        async def hang(request: httpx.Request) -> httpx.Response:
            entered.set()
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        # A cancelled request never completes, so respx does not record it as called.
        with respx.mock(assert_all_called=False) as mock:
            mock.get(BASE + "/hang").mock(side_effect=hang)
            mock.get(BASE + "/ok").mock(return_value=httpx.Response(200, json=1))
            client = AsyncServiceClient(
                BASE,
                service_name="cancel",
                target_service="conc",
                config=ClientConfig(circuit_breaker_fail_max=1, circuit_breaker_reset_timeout=0.01),
                registry=CollectorRegistry(),
            )
            for _ in range(3):
                entered.clear()
                task = asyncio.create_task(client.get("/hang"))
                await entered.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert testing.breaker_state("cancel", "conc") == "closed"
            # A cancelled probe leaves the breaker half-open with the probe slot free.
            testing.force_open("cancel", "conc")
            await asyncio.sleep(0.02)
            entered.clear()
            task = asyncio.create_task(client.get("/hang"))
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert testing.breaker_state("cancel", "conc") == "half-open"
            assert await client.get("/ok") == 1
            assert testing.breaker_state("cancel", "conc") == "closed"
            await client.close()

    asyncio.run(main())


@pytest.mark.facade_async
def test_half_open_lets_one_of_many_concurrent_tasks_probe() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    async def main() -> list[Any]:
        release = asyncio.Event()

        async def slow_ok(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(200, json="probe")

        with respx.mock() as mock:
            route = mock.get(BASE + "/p").mock(side_effect=slow_ok)
            client = AsyncServiceClient(
                BASE,
                service_name="probe",
                target_service="conc",
                config=ClientConfig(circuit_breaker_reset_timeout=0.01),
                registry=CollectorRegistry(),
            )
            testing.force_open("probe", "conc")
            await asyncio.sleep(0.02)

            async def one() -> Any:
                try:
                    return await client.get("/p")
                except ServiceUnavailableError as error:
                    return error

            tasks = [asyncio.create_task(one()) for _ in range(20)]
            await asyncio.sleep(0.05)
            release.set()
            results = await asyncio.gather(*tasks)
            assert route.call_count == 1
            await client.close()
            return results

    results = asyncio.run(main())
    assert results.count("probe") == 1
    assert sum(isinstance(r, ServiceUnavailableError) for r in results) == 19
    assert testing.breaker_state("probe", "conc") == "closed"


@pytest.mark.facade_sync
def test_half_open_lets_one_of_many_threads_probe() -> None:
    import responses

    from commclient import SyncServiceClient

    release = threading.Event()
    entered = threading.Event()

    def slow_ok(request: Any) -> tuple[int, dict[str, str], str]:
        entered.set()
        assert release.wait(10)
        return 200, {}, '"probe"'

    with responses.RequestsMock() as mock:
        mock.add_callback("GET", BASE + "/p", callback=slow_ok)
        client = SyncServiceClient(
            BASE,
            service_name="probe-threads",
            target_service="conc",
            config=ClientConfig(circuit_breaker_reset_timeout=0.01),
            registry=CollectorRegistry(),
        )
        testing.force_open("probe-threads", "conc")
        threading.Event().wait(0.02)

        def one() -> Any:
            try:
                return client.get("/p")
            except ServiceUnavailableError as error:
                return error

        with ThreadPoolExecutor(THREADS) as pool:
            probe = pool.submit(one)
            assert entered.wait(10)
            others = [pool.submit(one) for _ in range(THREADS - 1)]
            rejected = [f.result() for f in others]
            release.set()
            assert probe.result() == "probe"
        assert len(mock.calls) == 1
        client.close()
    assert all(isinstance(r, ServiceUnavailableError) for r in rejected)
    assert testing.breaker_state("probe-threads", "conc") == "closed"
