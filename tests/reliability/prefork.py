"""Scenario 7's process: a parent that uses every component, then forks workers (run with
``python -m``, so that the fork happens in a clean process, not inside pytest).

``python -m tests.reliability.prefork ECHO_URL REST_URL REDIS_URL WORKERS CALLS``

The parent warms up a ``SyncServiceClient`` (a pooled keep-alive connection), an
``AsyncServiceClient`` through ``compat.run_sync`` (the bridge), a ``CronRestClient``
behind ``compat.sync_proxy``, a ``LegacyShim`` function, the shared breaker and budget,
and a ``SyncRedisCache`` with a local tier and its listener holding ``probe``. Then it
forks WORKERS children with the fork start method. Each child and the parent make CALLS
calls through every inherited object at once; every echo must answer its own request.
When every child reports ready, the parent changes ``probe``; every child must see it.
One JSON line per process on stdout, then ``{"done": ...}``.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
import traceback
from collections import Counter
from typing import Any

from commclient import AsyncServiceClient, ClientConfig, SyncServiceClient
from commclient.cache import CacheConfig, SyncRedisCache
from compat import LegacyShim, run_sync, sync_proxy
from examples.cron_service.client import CronRestClient

CONFIG = ClientConfig(timeout=10.0, max_retries=2, retry_min_wait=0.01, retry_max_wait=0.05)
CACHE = CacheConfig(local_tier_size=100, local_tier_ttl=120.0, operation_timeout=2.0)
PROBE_WAIT = 30.0
#: How long a child may take in all; one that hangs (a bridge that thinks it still runs)
#: is reported as hung rather than holding the run up.
CHILD_TIMEOUT = 120.0


class Components:
    def __init__(self, echo_url: str, rest_url: str, redis_url: str) -> None:
        names = {"service_name": "prefork", "config": CONFIG}
        self.sync_client = SyncServiceClient(echo_url, target_service="echo", **names)
        self.async_client = AsyncServiceClient(echo_url, target_service="echo", **names)
        self.rest = sync_proxy(CronRestClient(rest_url, target_service="rest_service", **names))
        self.shim = LegacyShim(
            lambda: CronRestClient(rest_url, target_service="rest_service", **names),
            name="legacy_rest_client",
        )
        self.fetch_settings = self.shim.function(name="fetch_settings")(
            CronRestClient.get_global_settings
        )
        self.cache = SyncRedisCache.from_url(redis_url, "prefork", config=CACHE)

    def _cache_round_trip(self, key: str, number: int) -> bool:
        return bool(self.cache.set(key, number)) and self.cache.get(key) == number

    def use_all(self, tag: str, calls: int) -> dict[str, Any]:
        """CALLS calls through each component; the echo checks that answers do not cross."""
        outcome: Counter[str] = Counter()
        errors: list[str] = []

        def attempt(kind: str, call: Any, check: Any = None) -> None:
            try:
                value = call()
                if check is not None and not check(value):
                    outcome[f"{kind}: crossed"] += 1
                    return
                outcome[f"{kind}: ok"] += 1
            except BaseException as error:
                outcome[f"{kind}: {type(error).__name__}"] += 1
                if len(errors) < 3:
                    errors.append("".join(traceback.format_exception(error))[-600:])

        for number in range(calls):
            key = f"{tag}-{number}"

            def echoed(value: Any, key: str = key) -> bool:
                return isinstance(value, dict) and value["query"].get("key") == key

            attempt(
                "sync client",
                lambda k=key: self.sync_client.get("/echo", params={"key": k}),
                echoed,
            )
            attempt(
                "run_sync(async client)",
                lambda k=key: run_sync(self.async_client.get, "/echo", params={"key": k}),
                echoed,
            )
            if number % 5 == 0:
                attempt("sync_proxy(CronRestClient)", self.rest.get_global_settings)
                attempt("LegacyShim function", self.fetch_settings)
                attempt("cache", lambda k=key, n=number: self._cache_round_trip(k, n), bool)
        return {"outcome": dict(outcome), "errors": errors}


def child(components: Components, index: int, calls: int, pipe: Any) -> None:
    report: dict[str, Any] = {"process": f"worker-{index}"}
    try:
        report.update(components.use_all(f"w{index}", calls))
        report["probe_before"] = components.cache.get("probe")
        pipe.send({"ready": True})
        started = time.monotonic()
        seen = None
        while time.monotonic() - started < PROBE_WAIT:
            seen = components.cache.get("probe")
            if seen == "after-fork":
                break
            time.sleep(0.01)
        report["probe_after"] = seen
        report["invalidation_after_s"] = round(time.monotonic() - started, 3)
    except BaseException as error:
        report["crashed"] = "".join(traceback.format_exception(error))[-800:]
    pipe.send(report)


def main() -> None:
    echo_url, rest_url, redis_url, workers, calls = sys.argv[1:6]
    components = Components(echo_url, rest_url, redis_url)
    # The parent uses everything first, as a --preload master does.
    warm = components.use_all("parent-warm", 3)
    assert components.cache.start()
    components.cache.set("probe", "before-fork")
    assert components.cache.get("probe") == "before-fork"  # now in the local tier
    print(json.dumps({"process": "parent-warm-up", **warm}), flush=True)

    context = multiprocessing.get_context("fork")
    pipes = []
    processes = []
    for index in range(int(workers)):
        mine, theirs = context.Pipe()
        process = context.Process(target=child, args=(components, index, int(calls), theirs))
        process.start()
        pipes.append(mine)
        processes.append(process)
    parent = components.use_all("parent", int(calls))
    print(json.dumps({"process": "parent", **parent}), flush=True)

    give_up = time.monotonic() + CHILD_TIMEOUT
    ready = 0
    reports: dict[int, Any] = {}
    for index, pipe in enumerate(pipes):
        if pipe.poll(max(0.0, give_up - time.monotonic())):
            message = pipe.recv()
            if message.get("ready"):
                ready += 1
            else:
                reports[index] = message
    components.cache.set("probe", "after-fork")
    for index, pipe in enumerate(pipes):
        if index not in reports and pipe.poll(max(0.0, give_up - time.monotonic())):
            reports[index] = pipe.recv()
    for index, process in enumerate(processes):
        process.join(max(0.0, give_up - time.monotonic()) + 1)
        if process.is_alive():
            process.kill()
            process.join()
        report = reports.get(index, {"process": f"worker-{index}", "hung": True})
        report["exitcode"] = process.exitcode
        print(json.dumps(report), flush=True)
    print(json.dumps({"done": True, "ready": ready}), flush=True)


if __name__ == "__main__":
    main()
