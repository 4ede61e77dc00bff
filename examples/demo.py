"""A short tour of both facades against the example REST service on loopback.

Run with ``python -m examples.demo``. It starts the REST service, calls it through
``SyncServiceClient`` and ``AsyncServiceClient``, shows an idempotent POST, a breaker
opening on a dead target, and the metrics that were recorded.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, generate_latest

from commclient import (
    AsyncServiceClient,
    ClientConfig,
    ServiceClientError,
    SyncServiceClient,
    correlation_id_ctx,
)
from examples.rest_service import create_app
from examples.serving import free_port, serve


def sync_part(base_url: str, registry: CollectorRegistry) -> None:
    with SyncServiceClient(
        base_url, service_name="demo", target_service="rest_service", registry=registry
    ) as client:
        reminders = client.get("/api/reminders/scheduled")
        print(f"sync: {len(reminders)} scheduled reminders")
        first = reminders[0]["id"]
        client.patch("/api/reminders/{id}", path_params={"id": first}, json={"status": "sent"})
        left = client.get("/api/reminders/scheduled")
        print(f"sync: reminder {first} marked sent, {len(left)} left")


async def async_part(base_url: str, registry: CollectorRegistry) -> None:
    correlation_id_ctx.set("demo-run-1")
    async with AsyncServiceClient(
        base_url, service_name="demo", target_service="rest_service", registry=registry
    ) as client:
        settings = await asyncio.gather(*(client.get("/api/global-settings/") for _ in range(20)))
        same = len({str(s) for s in settings}) == 1
        print(f"async: 20 concurrent reads of the settings, all equal: {same}")
        job = {"job_type": "daily-digest"}
        first = await client.post("/api/batch-jobs/", json=job, idempotency_key="digest-2026-11-29")
        again = await client.post("/api/batch-jobs/", json=job, idempotency_key="digest-2026-11-29")
        print(f"async: idempotent POST created one batch job: {first['id'] == again['id']}")


def breaker_part(registry: CollectorRegistry) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = ClientConfig(
        max_retries=2,
        retry_min_wait=0.01,
        retry_max_wait=0.02,
        circuit_breaker_fail_max=2,
        circuit_breaker_reset_timeout=30,
    )
    with SyncServiceClient(
        dead,
        service_name="demo",
        target_service="dead_service",
        config=config,
        registry=registry,
    ) as client:
        for _ in range(4):
            try:
                client.get("/anything")
            except ServiceClientError as error:
                print(f"breaker: {type(error).__name__} after {error.attempts} attempt(s)")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    registry = CollectorRegistry()
    app = create_app()
    for n in range(3):
        app.service.create(
            "reminders", {"text": f"reminder {n}", "remind_at": f"2026-11-29T0{n}:00:00+00:00"}
        )
    with serve(app) as base_url:
        print(f"REST service on {base_url}")
        sync_part(base_url, registry)
        asyncio.run(async_part(base_url, registry))
    breaker_part(registry)
    print("\nmetrics:")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("http_client_") and "_bucket" not in line and "_created" not in line:
            print("  " + line)


if __name__ == "__main__":
    main()
