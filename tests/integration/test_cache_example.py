"""The read-through example runs, and the cache saves the REST reads it says it saves."""

from __future__ import annotations

import pytest

from tests import conftest_cache
from tests.conftest_cache import RELAXED, run

pytest.importorskip("uvicorn")

redis_server = conftest_cache.redis_server
redis_url = conftest_cache.redis_url
prefix = conftest_cache.prefix

EXPECTED_READS = {
    "first message": 2,  # settings + the user's secretary
    "ten more messages": 2,  # all from the cache
    "20 concurrent, new user": 3,  # one load for the new user's key
    "after PUT global-settings": 4,  # the middleware dropped the settings
    "after a new secretary link": 5,  # the middleware dropped the secretary links
}


@pytest.mark.facade_async
def test_read_through_example_in_memory() -> None:
    from examples.read_through import run_demo

    assert run(run_demo(None, config=RELAXED, verbose=False)) == EXPECTED_READS


@pytest.mark.facade_async
@pytest.mark.redis_server
def test_read_through_example_on_redis(redis_url: str, prefix: str) -> None:
    from examples.read_through import run_demo

    assert run(run_demo(redis_url, prefix=prefix, config=RELAXED, verbose=False)) == EXPECTED_READS
