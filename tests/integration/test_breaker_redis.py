"""Breaker state shared by processes through pybreaker's CircuitRedisStorage on a real Redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from commclient import ClientConfig, ServiceConnectionError, ServiceUnavailableError, testing
from tests.redis_server import RedisServer, free_port, require_redis_server

pytestmark = [pytest.mark.redis_server, pytest.mark.facade_sync]


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_redis_server()
    with RedisServer() as server:
        yield server.url


OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from commclient import ClientConfig, ServiceUnavailableError, SyncServiceClient

    config = ClientConfig(circuit_breaker_redis_url=sys.argv[1], circuit_breaker_fail_max=2)
    client = SyncServiceClient(
        sys.argv[2], service_name="replica", target_service="shared", config=config
    )
    try:
        client.get("/never-sent")
    except ServiceUnavailableError as error:
        print("unavailable", error.attempts)
    """
)


def test_a_breaker_opened_in_one_process_is_open_in_another(redis_url: str) -> None:
    from commclient import SyncServiceClient

    dead = f"http://127.0.0.1:{free_port()}"
    config = ClientConfig(
        circuit_breaker_redis_url=redis_url,
        circuit_breaker_fail_max=2,
        max_retries=1,
    )
    client = SyncServiceClient(dead, service_name="replica", target_service="shared", config=config)
    for _ in range(2):
        with pytest.raises(ServiceConnectionError):
            client.get("/x")
    with pytest.raises(ServiceUnavailableError):
        client.get("/x")
    other = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, redis_url, dead],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert other.stdout.split() == ["unavailable", "0"], other.stderr
    # Closing it here closes it for every replica.
    testing.force_closed("replica", "shared")
    testing.reset()
    fresh = SyncServiceClient(dead, service_name="replica", target_service="shared", config=config)
    with pytest.raises(ServiceConnectionError):
        fresh.get("/x")
    client.close()
    fresh.close()
