"""The migrated cron service: the legacy schedule moved onto ``AsyncIOScheduler``.

It builds the legacy scheduler (same jobs, ids and intervals), decorates every legacy job
with ``@migrated_job`` and moves the lot with ``migrate_scheduler``. ``async_jobs`` names
the jobs that already run their async version (``send_due_reminders`` and
``poll_batch_jobs`` have one); every other job is the legacy sync function, unchanged,
run in a worker thread so the loop never blocks. Moving a job back is leaving it out of
the set (or of ``$CRON_MIGRATION_ASYNC_JOBS``): the migration goes job by job and can be
undone.

Each run is recorded in the REST service's job executions through ``CronRestClient``
(the ``RunRecorder`` of ``cron_migration``). With ``lease_redis_url`` set, each
scheduled run executes on exactly one of the replicas sharing that Redis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from commclient import ClientConfig
from commclient.cache import AsyncCache, create_async_cache
from cron_migration import (
    ASYNC_JOBS_ENV,
    EventLoopLagMonitor,
    MigrationReport,
    ShutdownReport,
    migrate_scheduler,
    migrated_job,
    shutdown_gracefully,
)
from examples.cron_service import jobs
from examples.cron_service.client import CronRestClient
from examples.cron_service_legacy import jobs as legacy_jobs
from examples.cron_service_legacy.scheduler import build_scheduler
from examples.secretary_queue import (
    STREAM,
    AsyncInProcessQueue,
    AsyncRedisStreamQueue,
    AsyncTriggerQueue,
    InProcessQueue,
)

logger = logging.getLogger(__name__)

#: The jobs that have an async version.
ASYNC_VERSIONS = frozenset({"send_due_reminders", "poll_batch_jobs"})
#: Seconds one run may take before it fails as timed out.
RUN_TIMEOUT = 60.0
#: Every interval counts from here, so replicas agree on each run's scheduled time (the
#: lease is keyed by it) whenever they start.
SCHEDULE_ANCHOR = datetime(2026, 1, 1, tzinfo=timezone.utc)


def async_jobs_from_environment(default: Collection[str] = ASYNC_VERSIONS) -> frozenset[str]:
    """The jobs ``$CRON_MIGRATION_ASYNC_JOBS`` puts on the async path (``*``: all that can)."""
    raw = os.environ.get(ASYNC_JOBS_ENV)
    if raw is None:
        return frozenset(default)
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return ASYNC_VERSIONS if "*" in names else frozenset(names)


class CronService:
    """The scheduler and everything its jobs use; ``await start()``, ``await stop()``.

    ``registry``: where the client, cache and cron metrics go (None: the default one).
    ``intervals``: seconds between runs per job id, over the legacy schedule's.
    ``cache``: for the global settings (default: Redis at ``redis_url``, else in memory).
    ``trigger_stream``: the Redis stream reminders go to (with ``redis_url``).
    """

    def __init__(
        self,
        rest_url: str,
        *,
        redis_url: str | None = None,
        cache: AsyncCache | None = None,
        queue: AsyncTriggerQueue | None = None,
        client_config: ClientConfig | None = None,
        registry: CollectorRegistry | None = None,
        intervals: Mapping[str, float] | None = None,
        async_jobs: Collection[str] | None = None,
        run_timeout: float = RUN_TIMEOUT,
        lease_redis_url: str | None = None,
        trigger_stream: str = STREAM,
    ) -> None:
        self.async_jobs = async_jobs_from_environment() if async_jobs is None else async_jobs
        if isinstance(self.async_jobs, str):
            raise TypeError(f"async_jobs must be a collection of job ids, got {async_jobs!r}")
        unknown = sorted(set(self.async_jobs) - ASYNC_VERSIONS)
        if unknown:
            raise ValueError(
                f"no async version of {unknown}; jobs with one: {sorted(ASYNC_VERSIONS)}"
            )
        self.registry = registry
        self.client = CronRestClient(
            rest_url,
            service_name="cron_service",
            target_service="rest_service",
            config=client_config,
            registry=registry,
        )
        self.cache = (
            create_async_cache(redis_url, prefix="assistant_cache", registry=registry)
            if cache is None
            else cache
        )
        # The legacy jobs still in use read the REST service (and Redis) the old way; both
        # paths append to one trigger queue, so moving a job between them sends nothing twice.
        self.redis_url = redis_url
        legacy_queue = legacy_jobs.configure(rest_url, redis_url, stream=trigger_stream)
        self._redis: Any = None
        self.queue: AsyncTriggerQueue
        if queue is not None:
            self.queue = queue
        elif isinstance(legacy_queue, InProcessQueue):
            self.queue = AsyncInProcessQueue(legacy_queue)
        else:
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(str(redis_url))
            self.queue = AsyncRedisStreamQueue(self._redis, stream=trigger_stream)
        self.run_timeout = run_timeout
        self.lease_redis_url = lease_redis_url
        # The legacy schedule, its jobs decorated; never started, only migrated.
        legacy = build_scheduler(
            BackgroundScheduler(timezone="UTC"),
            intervals=dict(intervals or {}),
            wrap=self._wrap,
            start_date=SCHEDULE_ANCHOR,
        )
        replacements = {
            job_id: self._wrap(job_id, self._async_version(job_id)) for job_id in self.async_jobs
        }
        self.scheduler: AsyncIOScheduler
        self.report: MigrationReport
        self.scheduler, self.report = migrate_scheduler(
            legacy, async_jobs=replacements, registry=registry
        )

    @property
    def lag_monitor(self) -> EventLoopLagMonitor:
        assert self.report.lag_monitor is not None
        return self.report.lag_monitor

    def _wrap(self, job_id: str, function: Callable[..., Any]) -> Callable[..., Any]:
        decorated: Callable[..., Any] = migrated_job(
            function,
            timeout=self.run_timeout,
            recorder=self.client,
            lease=self.lease_redis_url,
            name=job_id,
            registry=self.registry,
        )
        return decorated

    def _async_version(self, job_id: str) -> Callable[[], Awaitable[Any]]:
        client, cache, queue = self.client, self.cache, self.queue
        if job_id == "send_due_reminders":

            async def send_due_reminders() -> dict[str, int]:
                return await jobs.send_reminders(client, cache, queue)

            return send_due_reminders

        async def poll_batch_jobs() -> int:
            return await jobs.poll_batch_jobs(client)

        return poll_batch_jobs

    async def start(self) -> None:
        """Start the scheduler on the running loop."""
        self.scheduler.start()

    async def stop(self, timeout: float = 30.0) -> ShutdownReport:
        """Let running jobs finish (after ``timeout``: cancelled, or abandoned if in a
        thread, and recorded as such), deliver the run records, then close the client,
        the cache and Redis."""
        try:
            return await shutdown_gracefully(self.scheduler, timeout=timeout)
        finally:
            await self.client.close()
            await self.cache.aclose()
            if self._redis is not None:
                await self._redis.aclose()
