"""``auth=``: who the caller is, as a header on every attempt, decided without I/O.

A fixed credential (:class:`BasicAuth`, a ``(username, password)`` pair, or
:class:`BearerAuth`) becomes one ``Authorization`` header, built once. A callable signs
each attempt afresh, so a token refreshed between two attempts is the one the retry
sends. Either way the header goes to the client's origin only: a redirect to another
origin loses it, as it loses every credential.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from ._config import check_headers

if TYPE_CHECKING:
    from ._wire import Request


class BasicAuth(NamedTuple):
    """HTTP Basic authentication (``auth=("user", "secret")`` says the same)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password='[REDACTED]')"


class BearerAuth(NamedTuple):
    """A bearer token: ``Authorization: Bearer <token>``."""

    token: str

    def __repr__(self) -> str:
        return "BearerAuth(token='[REDACTED]')"


#: Signs one attempt: receives the request about to be sent (method, url, headers,
#: content) and returns the headers to add to it, e.g. ``{"Authorization": ...}``.
Signer = Callable[["Request"], Mapping[str, str]]
Auth = BasicAuth | BearerAuth | tuple[str, str] | Signer
"""What ``auth=`` takes: ``BasicAuth``, ``BearerAuth``, a ``(user, password)`` pair, or a
callable that signs every attempt (:data:`Signer`)."""

_ASYNC_SIGNER = (
    "an auth callable must be a plain function returning the headers, not a coroutine "
    "function: it signs each attempt inside the call (fetch a token beforehand, e.g. "
    "BearerAuth(await get_token()) per call)"
)


def auth_header(auth: Auth) -> tuple[str, str] | None:
    """The ``Authorization`` header of a fixed credential; ``None`` for a signer."""
    if isinstance(auth, BearerAuth):
        return _checked(f"Bearer {auth.token}")
    if isinstance(auth, tuple):
        if len(auth) != 2 or not all(isinstance(part, str) for part in auth):
            raise TypeError("auth must be (username, password) strings, not other values")
        user_pass = f"{auth[0]}:{auth[1]}".encode()
        return _checked("Basic " + base64.b64encode(user_pass).decode())
    if callable(auth):
        if inspect.iscoroutinefunction(auth) or inspect.iscoroutinefunction(type(auth).__call__):
            raise TypeError(_ASYNC_SIGNER)
        return None
    raise TypeError(
        "auth must be (username, password), BasicAuth, BearerAuth or a callable that "
        f"signs a request, got {type(auth).__name__}"
    )


def _checked(value: str) -> tuple[str, str]:
    _check({"Authorization": value})
    return ("Authorization", value)


def _check(headers: Mapping[str, str]) -> None:
    # The message names the header, never its value: that is the credential.
    try:
        check_headers(headers, where="auth")
    except ValueError:
        names = ", ".join(repr(name) for name in headers)
        raise ValueError(
            f"auth: the header {names} must be a valid name with a printable ASCII value"
        ) from None


def sign(signer: Signer, request: Request) -> Request:
    """``request`` with the headers ``signer`` returns for it.

    The signer gets the attempt's own copy of the headers: one that sets a header on the
    request (as httpx's ``auth_flow`` does) signs this attempt, never the headers the
    client shares between its calls, where the credential would reach every later call.
    """
    own = request._replace(headers=dict(request.headers))
    added: object = signer(own)
    if not isinstance(added, Mapping):
        if inspect.isawaitable(added):
            _close(added)
            raise TypeError(_ASYNC_SIGNER)
        raise TypeError(f"an auth callable must return a mapping of headers, got {added!r}")
    replaced = {name.lower() for name in added}
    headers = {name: value for name, value in own.headers.items() if name.lower() not in replaced}
    headers.update(added)
    _check(added)
    # What the signer set on the request itself is checked as what it returns is.
    _check(
        {name: value for name, value in own.headers.items() if request.headers.get(name) != value}
    )
    return own._replace(headers=headers)


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # a coroutine never awaited would warn at garbage collection
