"""The REST service as a FastAPI application over :class:`RestService`.

Endpoints (each also answers without its trailing slash; every GET also answers HEAD):

=====================================================  ========================================
``GET  /api/reminders/scheduled?due_before=T``         reminders still to send, by time
``GET|PATCH /api/reminders/{id}``                      one reminder
``GET|PUT|PATCH /api/global-settings/``                the settings (PUT replaces, PATCH merges)
``GET|POST /api/conversations/``, ``GET|PATCH /{id}``  conversations; list filters: any field
``GET|POST /api/batch-jobs/``, ``GET .../pending``     batch jobs; ``GET|PATCH .../{id}``
``GET|POST /api/job-executions/``, ``GET /{id}``       run records (body of the POST:
                                                       ``job_id, job_name, scheduled_at,
                                                       correlation_id``); 201 ``status: created``
``POST /api/job-executions/{id}/start``                created -> running
``POST .../{id}/complete`` ``{result}``                -> completed
``POST .../{id}/fail`` ``{error, traceback}``          -> failed; a wrong state answers 409
``/api/users``, ``user-secretaries``, ``assistants``,  plain collections: list, create, get,
``tools`` (and ``POST /api/reminders/``)               PUT/PATCH
``GET|PUT|DELETE /_admin/faults``                      the fault switches (:mod:`.faults`)
``GET /metrics``, ``GET /healthz``                     Prometheus metrics, liveness
=====================================================  ========================================

Every POST honours ``Idempotency-Key`` (:mod:`.idempotency`). With a cache given,
``CacheInvalidationMiddleware`` drops the cached settings (and users, assistants...) the
moment they change here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict

from commclient.asgi import (
    ASGIApp,
    CacheInvalidationMiddleware,
    CorrelationIdMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    SupportsInvalidation,
)
from examples.invalidation_rules import INVALIDATION_RULES
from examples.rest_service.faults import FaultControl, FaultMiddleware
from examples.rest_service.idempotency import IdempotencyMiddleware
from examples.rest_service.store import ConflictError, NotFoundError, RestService

PLAIN_COLLECTIONS = ("users", "user-secretaries", "assistants", "tools")


class JobExecutionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    job_name: str
    scheduled_at: datetime | None = None
    correlation_id: str | None = None


class JobExecutionComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: Any = None


class JobExecutionFail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str
    traceback: str = ""


class FaultChange(BaseModel):
    """The switches to change; those left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float | None = None
    fail_next: int | None = None
    status: int | None = None
    latency: float | None = None
    outage: bool | None = None
    retry_after: float | None = None
    path_prefix: str | None = None


class RestApp(FastAPI):
    """The application; ``service`` is its store, ``faults`` its switches, ``registry``
    its metrics (a registry of its own, so that several apps fit in one process)."""

    def __init__(
        self, service: RestService, faults: FaultControl, registry: CollectorRegistry
    ) -> None:
        super().__init__(title="rest_service", redirect_slashes=False)
        self.service = service
        self.faults = faults
        self.registry = registry


def create_app(
    service: RestService | None = None,
    *,
    cache: SupportsInvalidation | None = None,
    faults: FaultControl | None = None,
    registry: CollectorRegistry | None = None,
) -> RestApp:
    """The REST service over ``service`` (a fresh, empty one by default).

    ``cache``: invalidate it after each successful change (``CacheInvalidationMiddleware``);
    ``None`` installs no invalidation.
    """
    app = RestApp(
        RestService() if service is None else service,
        FaultControl() if faults is None else faults,
        CollectorRegistry() if registry is None else registry,
    )
    _add_routes(app)
    # add_middleware wraps: the last one added runs first. A request meets the caller's
    # correlation id and trace (continued for the whole request), metrics, then
    # the faults (an injected 503 is never stored as an idempotent answer), then
    # idempotency, then the invalidation right around the routes.
    if cache is not None:
        app.add_middleware(CacheInvalidationMiddleware, cache=cache, rules=INVALIDATION_RULES)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(FaultMiddleware, control=app.faults)
    app.add_middleware(MetricsMiddleware, registry=app.registry)
    # Outermost: every log record of the request carries the caller's correlation id.
    app.add_middleware(CorrelationIdMiddleware)
    return app


class MetricsMiddleware:
    """``rest_requests_total{method,route,status}`` and the request duration per route."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "rest_requests_total",
            "Requests the REST service answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "rest_request_duration_seconds",
            "Time the REST service took to answer",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.requests.labels(method, route, str(status)).inc()
            self.duration.labels(method, route).observe(time.perf_counter() - started)


def _add_routes(app: RestApp) -> None:
    service = app.service

    def route(methods: str, path: str, status_code: int = 200) -> Callable[[Any], Any]:
        """Register ``path`` with and without its trailing slash."""

        # Every GET answers HEAD too (RFC 9110 9.3.2): its status and headers, no body.
        verbs = methods.split() + (["HEAD"] if "GET" in methods.split() else [])

        def register(endpoint: Any) -> Any:
            bare = path.rstrip("/")
            for variant in dict.fromkeys((path, bare, bare + "/")):
                app.add_api_route(
                    variant,
                    endpoint,
                    methods=verbs,
                    status_code=status_code,
                    include_in_schema=variant == path,
                )
            return endpoint

        return register

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, error: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, error: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @route("GET", "/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @route("GET", "/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(app.registry), media_type=CONTENT_TYPE_LATEST)

    # -- reminders -------------------------------------------------------------------------

    @route("GET", "/api/reminders/scheduled")
    async def scheduled_reminders(due_before: datetime | None = None) -> list[dict[str, Any]]:
        if due_before is not None and due_before.tzinfo is None:
            raise HTTPException(422, "due_before needs a UTC offset (e.g. +00:00)")
        return service.scheduled_reminders(due_before)

    # -- global settings -------------------------------------------------------------------

    @route("GET", "/api/global-settings/")
    async def get_settings() -> dict[str, Any]:
        return service.settings()

    @route("PUT", "/api/global-settings/")
    async def put_settings(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return service.update_settings(body, replace=True)

    @route("PATCH", "/api/global-settings/")
    async def patch_settings(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return service.update_settings(body, replace=False)

    # -- batch jobs ------------------------------------------------------------------------

    @route("GET", "/api/batch-jobs/pending")
    async def pending_batch_jobs() -> list[dict[str, Any]]:
        return service.pending_batch_jobs()

    @route("POST", "/api/batch-jobs/", status_code=201)
    async def create_batch_job(
        response: Response,
        body: dict[str, Any] = Body(...),  # noqa: B008
    ) -> dict[str, Any]:
        if not isinstance(body.get("job_type"), str):
            raise HTTPException(422, "a batch job needs a job_type (a string)")
        document = {"status": "pending", "result": None, **body}
        return created(response, "/api/batch-jobs/", service.create("batch-jobs", document))

    # -- job executions (the run records) ----------------------------------------------------

    @route("POST", "/api/job-executions/", status_code=201)
    async def create_job_execution(body: JobExecutionCreate) -> dict[str, Any]:
        return service.create_job_execution(
            job_id=body.job_id,
            job_name=body.job_name,
            scheduled_at=body.scheduled_at,
            correlation_id=body.correlation_id,
        )

    @route("POST", "/api/job-executions/{execution_id}/start")
    async def start_job_execution(execution_id: int) -> dict[str, Any]:
        return service.move_job_execution(execution_id, "running")

    @route("POST", "/api/job-executions/{execution_id}/complete")
    async def complete_job_execution(
        execution_id: int, body: JobExecutionComplete
    ) -> dict[str, Any]:
        return service.move_job_execution(execution_id, "completed", result=body.result)

    @route("POST", "/api/job-executions/{execution_id}/fail")
    async def fail_job_execution(execution_id: int, body: JobExecutionFail) -> dict[str, Any]:
        return service.move_job_execution(
            execution_id, "failed", error=body.error, traceback=body.traceback
        )

    # -- the collections: list, create, get, change ------------------------------------------

    _collection_routes(route, service, "reminders", create=True, defaults={"status": "scheduled"})
    _collection_routes(route, service, "conversations", create=True)
    _collection_routes(route, service, "batch-jobs", create=False)
    _collection_routes(route, service, "job-executions", create=False)
    for collection in PLAIN_COLLECTIONS:
        _collection_routes(route, service, collection, create=True, put=True)

    # -- fault switches ----------------------------------------------------------------------

    @route("GET", "/_admin/faults")
    async def get_faults() -> dict[str, Any]:
        return _describe(app.faults)

    @route("PUT", "/_admin/faults")
    async def put_faults(change: FaultChange) -> dict[str, Any]:
        try:
            app.faults.configure(**change.model_dump(exclude_unset=True))
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        return _describe(app.faults)

    @route("DELETE", "/_admin/faults")
    async def clear_faults() -> dict[str, Any]:
        app.faults.clear()
        return _describe(app.faults)


def created(response: Response, base: str, record: dict[str, Any]) -> dict[str, Any]:
    """A 201's record, with ``Location`` naming where it can be read."""
    response.headers["Location"] = f"{base}{record['id']}"
    return record


def _collection_routes(
    route: Callable[..., Callable[[Any], Any]],
    service: RestService,
    collection: str,
    *,
    create: bool,
    put: bool = False,
    defaults: dict[str, Any] | None = None,
) -> None:
    base = f"/api/{collection}/"

    async def list_records(request: Request) -> list[dict[str, Any]]:
        return service.find(collection, dict(request.query_params))

    async def get_record(record_id: int) -> dict[str, Any]:
        return service.get(collection, record_id)

    async def change_record(
        record_id: int,
        body: dict[str, Any] = Body(...),  # noqa: B008
    ) -> dict[str, Any]:
        return service.update(collection, record_id, body)

    async def create_record(
        response: Response,
        body: dict[str, Any] = Body(...),  # noqa: B008
    ) -> dict[str, Any]:
        return created(response, base, service.create(collection, {**(defaults or {}), **body}))

    route("GET", base)(list_records)
    route("GET", base + "{record_id}")(get_record)
    if collection != "job-executions":  # a run record changes only through its transitions
        route("PATCH PUT" if put else "PATCH", base + "{record_id}")(change_record)
    if create:
        route("POST", base, status_code=201)(create_record)


def _describe(faults: FaultControl) -> dict[str, Any]:
    return {
        **dataclasses.asdict(faults.settings),
        "injected_errors": faults.injected_errors,
        "delayed_requests": faults.delayed_requests,
    }
