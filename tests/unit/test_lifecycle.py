"""Context managers, idempotent close, event-loop binding, missing transports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest
from prometheus_client import CollectorRegistry

BASE = "http://life.test"


@pytest.mark.facade_sync
def test_sync_close_is_idempotent_and_final() -> None:
    import responses

    from commclient import SyncServiceClient

    with responses.RequestsMock() as mock:
        mock.add("GET", BASE + "/x", json=1)
        with SyncServiceClient(
            BASE, service_name="life", target_service="sync", registry=CollectorRegistry()
        ) as client:
            assert client.get("/x") == 1
        client.close()
        client.close()
        with pytest.raises(RuntimeError, match="closed"):
            client.get("/x")


@pytest.mark.facade_async
def test_async_close_is_idempotent_and_final() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    async def main() -> None:
        with respx.mock() as mock:
            mock.get(BASE + "/x").mock(return_value=httpx.Response(200, json=1))
            async with AsyncServiceClient(
                BASE, service_name="life", target_service="async", registry=CollectorRegistry()
            ) as client:
                assert await client.get("/x") == 1
            await client.close()
            await client.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                await client.get("/x")

    asyncio.run(main())


@pytest.mark.facade_async
def test_async_client_is_made_lazily_in_the_running_loop() -> None:
    from commclient import AsyncServiceClient

    client = AsyncServiceClient(
        BASE, service_name="life", target_service="lazy", registry=CollectorRegistry()
    )
    assert client._client is None, "no httpx client before the first call"


@pytest.mark.facade_async
def test_a_later_loop_gets_a_fresh_client_not_event_loop_is_closed() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    client = AsyncServiceClient(
        BASE, service_name="life", target_service="loops", registry=CollectorRegistry()
    )
    with respx.mock() as mock:
        mock.get(BASE + "/x").mock(return_value=httpx.Response(200, json=1))
        # asyncio.run per call: each loop is closed before the next one starts.
        assert [asyncio.run(client.get("/x")) for _ in range(3)] == [1, 1, 1]


@pytest.mark.facade_async
def test_use_from_a_second_running_loop_is_a_clear_error() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    client = AsyncServiceClient(
        BASE, service_name="life", target_service="two-loops", registry=CollectorRegistry()
    )
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        with respx.mock() as mock:
            mock.get(BASE + "/x").mock(return_value=httpx.Response(200, json=1))
            future = asyncio.run_coroutine_threadsafe(client.get("/x"), other)
            assert future.result(10) == 1
            with pytest.raises(RuntimeError, match="another event loop that is still running"):
                asyncio.run(client.get("/x"))
    finally:
        asyncio.run_coroutine_threadsafe(client.close(), other).result(10)
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        other.close()


@pytest.mark.facade_async
def test_use_from_a_second_loop_while_the_first_is_open_says_what_to_do() -> None:
    import httpx
    import respx

    from commclient import AsyncServiceClient

    client = AsyncServiceClient(
        BASE, service_name="life", target_service="open-loop", registry=CollectorRegistry()
    )
    first = asyncio.new_event_loop()
    try:
        with respx.mock() as mock:
            mock.get(BASE + "/x").mock(return_value=httpx.Response(200, json=1))
            assert first.run_until_complete(client.get("/x")) == 1
            # The first loop is idle, not running: the error said it was still running.
            with pytest.raises(RuntimeError, match="another event loop, which is not closed"):
                asyncio.run(client.get("/x"))
            first.run_until_complete(client.close())
    finally:
        first.close()


@pytest.mark.parametrize(
    ("facade", "module", "extra"),
    [("SyncServiceClient", "requests", "sync"), ("AsyncServiceClient", "httpx", "async")],
)
def test_missing_transport_names_the_extra(facade: str, module: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "import commclient\n"
        "try:\n"
        f"    commclient.{facade}('http://x', service_name='a', target_service='b')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'commclient[{extra}]'" in out.stdout
