"""One breaker per (service, target) in a process, whichever facade trips it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceConnectionError,
    ServiceUnavailableError,
    SyncServiceClient,
    testing,
)
from tests.redis_server import free_port

pytestmark = [pytest.mark.facade_sync, pytest.mark.facade_async]


def test_a_breaker_tripped_by_sync_calls_stops_async_calls_too() -> None:
    testing.reset()
    dead = f"http://127.0.0.1:{free_port()}"
    config = ClientConfig(max_retries=1, circuit_breaker_fail_max=2)
    names = {"service_name": "both-facades", "target_service": "dead"}
    with SyncServiceClient(dead, config=config, registry=CollectorRegistry(), **names) as legacy:
        for _ in range(2):
            with pytest.raises(ServiceConnectionError):
                legacy.get("/x")

    async def new_code() -> ServiceUnavailableError:
        async with AsyncServiceClient(dead, registry=CollectorRegistry(), **names) as client:
            with pytest.raises(ServiceUnavailableError) as caught:
                await client.get("/x")
            return caught.value

    error = asyncio.run(new_code())
    assert error.attempts == 0
    testing.force_closed("both-facades", "dead")

    async def after_close() -> None:
        async with AsyncServiceClient(dead, registry=CollectorRegistry(), **names) as client:
            with pytest.raises(ServiceConnectionError):
                await client.get("/x")

    asyncio.run(after_close())
    testing.reset()
