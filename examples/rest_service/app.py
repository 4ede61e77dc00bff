"""The REST service: reminders, settings, conversations, batch jobs and job executions.

A pure ASGI application over an in-memory store, so that the examples and the tests
run a real HTTP service without a web framework. ``Idempotency-Key`` on a POST makes
a repeated request return the first result instead of creating a second record.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[["RestService", dict[str, str], Any, dict[str, list[str]]], tuple[int, Any]]

COLLECTIONS = (
    "reminders",
    "conversations",
    "batch-jobs",
    "job-executions",
    "users",
    "user-secretaries",
    "assistants",
    "tools",
)


class RestService:
    """The store and the routes; thread-safe so a threaded server may share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.records: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in COLLECTIONS}
        self.global_settings: dict[str, Any] = {"timezone": "UTC", "reminder_lead_minutes": 0}
        self._idempotent: dict[str, tuple[int, Any]] = {}

    def create(self, collection: str, document: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            record = {**document, "id": next(self._ids)}
            record.setdefault("created_at", _now())
            self.records[collection][record["id"]] = record
            return record

    def dispatch(
        self, method: str, path: str, body: Any, query: dict[str, list[str]], key: str | None
    ) -> tuple[int, Any]:
        if method == "POST" and key is not None:
            with self._lock:
                if key in self._idempotent:
                    return self._idempotent[key]
        for route_method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                result = handler(self, match.groupdict(), body, query)
                if method == "POST" and key is not None and result[0] < 300:
                    with self._lock:
                        self._idempotent[key] = result
                return result
        return 404, {"detail": f"no route for {method} {path}"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _active_reminders(
    service: RestService, params: dict[str, str], body: Any, query: dict[str, list[str]]
) -> tuple[int, Any]:
    due_before = query.get("due_before", [None])[0]
    reminders = [
        r
        for r in service.records["reminders"].values()
        if r.get("status", "active") == "active"
        and (due_before is None or str(r.get("remind_at", "")) <= due_before)
    ]
    return 200, sorted(reminders, key=lambda r: (str(r.get("remind_at", "")), r["id"]))


def _list(collection: str) -> Handler:
    def handler(
        service: RestService, params: dict[str, str], body: Any, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        items = list(service.records[collection].values())
        for name, values in query.items():
            items = [i for i in items if str(i.get(name)) in values]
        return 200, items

    return handler


def _create(collection: str) -> Handler:
    def handler(
        service: RestService, params: dict[str, str], body: Any, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 422, {"detail": "the body must be a JSON object"}
        return 201, service.create(collection, body)

    return handler


def _item(collection: str, update: bool) -> Handler:
    def handler(
        service: RestService, params: dict[str, str], body: Any, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        record = service.records[collection].get(int(params["id"]))
        if record is None:
            return 404, {"detail": f"{collection} {params['id']} not found"}
        if update:
            if not isinstance(body, dict):
                return 422, {"detail": "the body must be a JSON object"}
            record.update({k: v for k, v in body.items() if k != "id"})
        return 200, record

    return handler


def _settings(update: bool) -> Handler:
    def handler(
        service: RestService, params: dict[str, str], body: Any, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        if update:
            if not isinstance(body, dict):
                return 422, {"detail": "the body must be a JSON object"}
            service.global_settings.update(body)
        return 200, service.global_settings

    return handler


def _health(
    service: RestService, params: dict[str, str], body: Any, query: dict[str, list[str]]
) -> tuple[int, Any]:
    return 200, {"status": "ok"}


_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/healthz"), _health),
    ("GET", re.compile(r"/api/reminders/active/?"), _active_reminders),
    ("GET", re.compile(r"/api/global-settings/?"), _settings(update=False)),
    ("PUT", re.compile(r"/api/global-settings/?"), _settings(update=True)),
]
for _name in COLLECTIONS:
    _ROUTES += [
        ("GET", re.compile(rf"/api/{_name}/?"), _list(_name)),
        ("POST", re.compile(rf"/api/{_name}/?"), _create(_name)),
        ("GET", re.compile(rf"/api/{_name}/(?P<id>\d+)/?"), _item(_name, update=False)),
        ("PATCH", re.compile(rf"/api/{_name}/(?P<id>\d+)/?"), _item(_name, update=True)),
        ("PUT", re.compile(rf"/api/{_name}/(?P<id>\d+)/?"), _item(_name, update=True)),
    ]


class RestApp:
    """The ASGI application; ``service`` is its store, for seeding and inspection."""

    def __init__(self, service: RestService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, document = 400, {"detail": "the body is not valid JSON"}
        else:
            status, document = self.service.dispatch(
                scope["method"], scope["path"], body, query, headers.get("idempotency-key")
            )
        payload = json.dumps(document).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def create_app(service: RestService | None = None) -> RestApp:
    """The ASGI application serving ``service`` (a fresh, empty one by default)."""
    return RestApp(RestService() if service is None else service)
