"""``Idempotency-Key`` for every POST: the same key gets the first response, applied once.

A POST carrying the header runs once; later requests with the same key get the stored
status, headers and body back (with ``Idempotent-Replayed: true``) without reaching the
application. A request with the key arriving while the first is still running waits for
it, so a client that timed out and retried never applies the change twice. The same key
reused for a different request (method, path or body) is refused with 422. 5xx responses
are not stored: the client may try again with the same key. The store keeps the
``max_keys`` newest keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from commclient.asgi import ASGIApp, Message, Receive, Scope, Send

MAX_KEY_LENGTH = 255


@dataclass
class _Stored:
    fingerprint: str
    start: Message | None = None
    body: list[bytes] = field(default_factory=list)


class IdempotencyMiddleware:
    """Pure ASGI; the state lives in the instance and belongs to one event loop."""

    def __init__(self, app: ASGIApp, *, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.app = app
        self.max_keys = max_keys
        self._responses: OrderedDict[str, _Stored] = OrderedDict()
        # Per key: its lock and how many requests hold or wait for it; dropped at zero.
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self.replays = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, b"idempotency-key")
        if scope["type"] != "http" or scope.get("method") != "POST" or key is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH:
            await _reply(send, 400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before it finished sending
        fingerprint = hashlib.sha256(b"\0".join([scope.get("path", "").encode(), body])).hexdigest()
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                stored = self._responses.get(key)
                if stored is not None:
                    await self._replay(stored, fingerprint, key, send)
                    return
                await self._run_and_store(scope, body, receive, send, key, fingerprint)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    async def _replay(self, stored: _Stored, fingerprint: str, key: str, send: Send) -> None:
        if stored.fingerprint != fingerprint:
            await _reply(send, 422, f"Idempotency-Key {key!r} was used for a different request")
            return
        assert stored.start is not None
        self.replays += 1
        self._responses.move_to_end(key)
        start = dict(stored.start)
        start["headers"] = [*start.get("headers", []), (b"idempotent-replayed", b"true")]
        await send(start)
        await send({"type": "http.response.body", "body": b"".join(stored.body)})

    async def _run_and_store(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        key: str,
        fingerprint: str,
    ) -> None:
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay_receive() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        stored = _Stored(fingerprint)

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                stored.start = dict(message)
            elif message["type"] == "http.response.body":
                stored.body.append(bytes(message.get("body", b"")))
            await send(message)

        await self.app(scope, replay_receive, capture)
        if stored.start is not None and int(stored.start["status"]) < 500:
            self._responses[key] = stored
            self._responses.move_to_end(key)
            while len(self._responses) > self.max_keys:
                self._responses.popitem(last=False)


def _header(scope: Scope, name: bytes) -> str | None:
    for header_name, value in scope.get("headers", []):
        if header_name.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _reply(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    start: MutableMapping[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
    }
    await send(start)
    await send({"type": "http.response.body", "body": payload})
