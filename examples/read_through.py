"""Read-through caching as the assistant factory does it: global settings and the user's
secretary, cached for 300 s, dropped the moment the REST service changes them.

Run with ``python -m examples.read_through`` (an in-memory cache) or with
``REDIS_URL=redis://127.0.0.1:6379/0`` set (Redis, shared by every process). It starts the
example REST service behind ``CacheInvalidationMiddleware``, builds the assistant's context
a few times, changes the settings and the secretary link over REST, and shows how many REST
calls were made along the way.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: make the repository root importable, as `python -m` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
from typing import Any

from pydantic import BaseModel, ConfigDict

from commclient import AsyncServiceClient
from commclient.asgi import CacheInvalidationMiddleware, Receive, Scope, Send
from commclient.cache import AsyncCache, CacheConfig, create_async_cache
from examples.invalidation_rules import INVALIDATION_RULES
from examples.rest_service import create_app
from examples.serving import serve

SETTINGS_TTL = 300
SECRETARY_TTL = 300


class GlobalSettings(BaseModel):
    """Frozen: the cache's local tier may hand the same object to every caller."""

    model_config = ConfigDict(frozen=True, extra="allow")

    timezone: str
    reminder_lead_minutes: int = 0


class UserSecretary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    id: int
    user_id: int
    secretary_id: int


class AssistantContext(BaseModel):
    settings: GlobalSettings
    secretary: UserSecretary | None


class AssistantFactory:
    """Builds what every message needs; reads REST only when the cache does not know."""

    def __init__(self, client: AsyncServiceClient, cache: AsyncCache) -> None:
        self.client = client
        self.cache = cache

    async def global_settings(self) -> GlobalSettings:
        settings: GlobalSettings = await self.cache.get_or_set(
            "global_settings",
            lambda: self.client.get("/api/global-settings/"),
            ttl=SETTINGS_TTL,
            model=GlobalSettings,
        )
        return settings

    async def user_secretary(self, user_id: int) -> UserSecretary | None:
        async def load() -> dict[str, Any] | None:
            links = await self.client.get("/api/user-secretaries/", params={"user_id": user_id})
            return links[0] if links else None

        # "No secretary" is cached too (as JSON null): it is an answer, not a miss.
        link = await self.cache.get_or_set(f"user_secretary:{user_id}", load, ttl=SECRETARY_TTL)
        return None if link is None else UserSecretary.model_validate(link)

    async def context(self, user_id: int) -> AssistantContext:
        settings, secretary = await asyncio.gather(
            self.global_settings(), self.user_secretary(user_id)
        )
        return AssistantContext(settings=settings, secretary=secretary)


class CountingApp:
    """Counts the GETs that reach the REST service: what the cache saves."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.reads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            self.reads += 1
        await self.app(scope, receive, send)


def describe(context: AssistantContext) -> str:
    secretary = context.secretary
    return "no secretary" if secretary is None else f"secretary {secretary.secretary_id}"


async def run_demo(
    redis_url: str | None,
    *,
    prefix: str = "assistant_cache",
    config: CacheConfig | None = None,
    verbose: bool = True,
) -> dict[str, int]:
    """The walk-through; returns the REST reads counted after each step."""
    rest = create_app()
    rest.service.create("user-secretaries", {"user_id": 7, "secretary_id": 70})
    counted = CountingApp(rest)
    # The REST service's side: its own cache object, invalidating after each change.
    rest_cache = create_async_cache(redis_url, prefix=prefix, config=config)
    app = CacheInvalidationMiddleware(counted, rest_cache, INVALIDATION_RULES)
    # The assistant's side. Without Redis, both sides must share one in-memory store.
    cache = create_async_cache(redis_url, prefix=prefix, config=config) if redis_url else rest_cache
    reads: dict[str, int] = {}

    def show(step: str, detail: str) -> None:
        reads[step] = counted.reads
        if verbose:
            print(f"{step:<28} {detail:<52} REST reads so far: {counted.reads}")

    with serve(app) as base_url:
        async with AsyncServiceClient(
            base_url, service_name="assistant", target_service="rest_service"
        ) as client:
            factory = AssistantFactory(client, cache)
            context = await factory.context(user_id=7)
            show("first message", f"tz={context.settings.timezone}, {describe(context)}")
            for _ in range(10):
                context = await factory.context(user_id=7)
            show("ten more messages", "served from the cache")
            await asyncio.gather(*(factory.context(user_id=8) for _ in range(20)))
            show("20 concurrent, new user", "one load per key (no stampede)")
            await client.put("/api/global-settings/", json={"timezone": "Europe/Berlin"})
            context = await factory.context(user_id=7)
            show("after PUT global-settings", f"tz={context.settings.timezone} (fresh)")
            link = await client.post(
                "/api/user-secretaries/", json={"user_id": 8, "secretary_id": 80}
            )
            await client.put(f"/api/user-secretaries/{link['id']}", json={"secretary_id": 81})
            context = await factory.context(user_id=8)
            show("after a new secretary link", describe(context))
    await rest_cache.aclose()
    if cache is not rest_cache:
        await cache.aclose()
    return reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="Redis for the cache (default: $REDIS_URL; none: an in-memory cache)",
    )
    redis_url = parser.parse_args().redis_url
    print(f"cache: {'Redis at ' + redis_url if redis_url else 'in memory (no REDIS_URL)'}")
    asyncio.run(run_demo(redis_url))


if __name__ == "__main__":
    main()
