"""What callers get besides JSON: raw responses, bodies, per-call timeouts, transport settings.

Run on both facades through :class:`Driver`, against the real loopback server.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tenacity import RetryCallState, retry_if_exception_type, retry_if_result

from commclient import (
    JSON_NULL,
    BasicAuth,
    BearerAuth,
    Request,
    ServiceConnectionError,
    ServiceDecodeError,
    ServiceResponse,
    ServiceResponseError,
    ServiceTimeoutError,
    testing,
)
from tests.http_server import ServerProcess
from tests.integration.conftest import Driver, Names, fast_config
from tests.prerequisites import missing


def test_request_raw_reaches_what_json_cannot(make: Any, http_server: ServerProcess) -> None:
    call = make()
    created = call(
        "request_raw", "GET", "/reply", params={"status": "201", "header": "Location:/x/1"}
    )
    assert isinstance(created, ServiceResponse)
    assert (created.status_code, created.headers["location"], created.json()) == (201, "/x/1", {})
    assert call("request_raw", "GET", "/reply", params={"status": "304"}).status_code == 304
    html = call("request_raw", "GET", "/html/200")
    assert html.headers["Content-Type"] == "text/html"
    assert html.text.startswith("<html>")
    # Errors stay errors, with the headers of the response.
    with pytest.raises(ServiceResponseError) as info:
        call("request_raw", "GET", "/status/404")
    assert info.value.headers["content-type"] == "application/json"


def test_request_raw_retries_like_request(make: Any, names: Names) -> None:
    call = make()
    with testing.no_wait():
        response = call("request_raw", "GET", "/flaky", params={"key": names.key(), "first": "2"})
    assert response.json()["calls"] == 3


def test_content_data_and_json_null_bodies(make: Any) -> None:
    call = make()
    sent = call("post", "/echo", content=b"\x00raw", headers={"Content-Type": "x/y"})
    assert sent["headers"]["content-type"] == "x/y"
    assert sent["headers"]["content-length"] == "4"
    form = call("post", "/echo", data={"a": "1", "b": ["2", "3"]})
    assert form["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert form["body"] == "a=1&b=2&b=3"
    assert call("post", "/echo", json=JSON_NULL)["headers"]["content-type"] == "application/json"
    assert call("post", "/echo", json=None)["headers"]["content-length"] == "0"
    with pytest.raises(ValueError, match="one body"):
        call("post", "/echo", json={"a": 1}, content=b"x")
    with pytest.raises(TypeError, match="content"):
        call("post", "/echo", content="text")


def test_files_are_sent_again_by_a_retry(
    make: Any, http_server: ServerProcess, names: Names
) -> None:
    call = make()
    key = names.key()
    pdf = b"%PDF-1.4 fake"
    with testing.no_wait():
        result = call(
            "post",
            "/flaky",
            params={"key": key, "first": "1"},
            files={"file": ("a.pdf", pdf, "application/pdf")},
            data={"note": "x"},
            idempotency_key="upload-1",
        )
    assert result["calls"] == 2
    first, second = http_server.calls(key)
    assert first["body"] == second["body"]
    assert 'filename="a.pdf"' in second["body"]
    assert "%PDF-1.4 fake" in second["body"]
    assert result["headers"]["content-type"].startswith("multipart/form-data; boundary=")


def test_a_per_call_timeout_overrides_the_read_timeout(make: Any) -> None:
    call = make(fast_config(timeout=10.0, max_retries=1))
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError):
        call("get", "/slow", params={"seconds": "5"}, timeout=0.3)
    assert time.monotonic() - started < 4.0
    with pytest.raises(ValueError, match="timeout"):
        call("get", "/echo", timeout=0)


def test_a_configured_proxy_carries_every_request(
    facade: str, http_server: ServerProcess, names: Names
) -> None:
    # The test server answers a proxy's absolute-form request like any other: the call to
    # a host that does not exist reaches it only through the proxy.
    config = fast_config(proxy=http_server.base_url, max_retries=1)
    driver = Driver(facade, "http://service.invalid:8000", names, config)
    try:
        assert driver("get", "/echo", params={"via": "proxy"})["query"] == {"via": "proxy"}
    finally:
        driver.close()


def test_a_proxy_that_refuses_is_a_connect_failure_naming_the_proxy(
    facade: str, names: Names, refused_port: int
) -> None:
    # Nothing reached the target: the sync facade called it a lost connection (a POST was
    # then not repeated), and both named the target's address as the one refusing.
    config = fast_config(proxy=f"http://127.0.0.1:{refused_port}", max_retries=2)
    driver = Driver(facade, "http://service.invalid:8000", names, config)
    try:
        with testing.no_wait(), pytest.raises(ServiceConnectionError) as info:
            driver("post", "/echo", json={})
        assert info.value.attempts == 2
        assert str(info.value).startswith(
            f"connect: proxy 127.0.0.1:{refused_port} refused the connection"
        )
    finally:
        driver.close()


def test_trust_env_reads_the_proxy_once_when_the_client_is_built(
    facade: str, http_server: ServerProcess, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", http_server.base_url)
    monkeypatch.setenv("http_proxy", http_server.base_url)
    trusting = Driver(facade, "http://service.invalid:8000", names, fast_config(trust_env=True))
    ignoring = Driver(facade, "http://service.invalid:8000", names, fast_config(max_retries=1))
    try:
        assert trusting("get", "/echo")["path"] == "/echo"
        # Read once: a variable changed later is not seen by this client.
        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.delenv("http_proxy")
        assert trusting("get", "/echo")["path"] == "/echo"
        with pytest.raises(ServiceConnectionError):
            ignoring("get", "/echo")
    finally:
        trusting.close()
        ignoring.close()


def test_testing_reset_gives_live_clients_a_fresh_budget(make: Any) -> None:
    call = make(fast_config(retry_budget_max_tokens=0, retry_budget_min_per_second=0))
    budget = call.client._core.current_budget()
    testing.reset()
    assert call.client._core.current_budget() is not budget


# --- TLS: verify, a CA bundle, a client certificate ------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(directory: Path, name: str, extensions: str) -> tuple[str, str]:
    """A key and a certificate for ``name``, signed by the test CA in ``directory``."""
    key, csr, cert = (str(directory / f"{name}.{ext}") for ext in ("key", "csr", "pem"))
    extfile = directory / f"{name}.ext"
    extfile.write_text(
        "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n"
        "keyUsage=digitalSignature\n" + extensions
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", str(directory / "ca.pem"),
        "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", str(extfile),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("openssl") is None:
        missing("needs the openssl command (Debian package openssl)")
    directory = tmp_path_factory.mktemp("tls")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem"),
        "-days", "2", "-subj", "/CN=commclient test CA",
    )  # fmt: skip
    server = _issue(
        directory,
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(directory, "client", "extendedKeyUsage=clientAuth\n")
    return {
        "ca": str(directory / "ca.pem"),
        "server_cert": server[0],
        "server_key": server[1],
        "client_cert": client[0],
        "client_key": client[1],
    }


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_verify_takes_a_ca_bundle_or_false(
    facade: str, tls_files: dict[str, str], names: Names
) -> None:
    with ServerProcess(tls=[tls_files["server_cert"], tls_files["server_key"]]) as server:
        for verify, works in ((tls_files["ca"], True), (False, True), (True, False)):
            config = fast_config(verify=verify, max_retries=1)
            driver = Driver(facade, server.base_url, names, config)
            try:
                if works:
                    assert driver("get", "/echo")["method"] == "GET"
                else:
                    with pytest.raises(ServiceConnectionError):
                        driver("get", "/echo")
            finally:
                driver.close()
            testing.reset()


def test_cert_presents_a_client_certificate(
    facade: str, tls_files: dict[str, str], names: Names
) -> None:
    files = tls_files
    tls = [files["server_cert"], files["server_key"], files["ca"]]
    with ServerProcess(tls=tls) as server:
        mutual = fast_config(verify=files["ca"], cert=(files["client_cert"], files["client_key"]))
        driver = Driver(facade, server.base_url, names, mutual)
        try:
            assert driver("get", "/echo")["method"] == "GET"
        finally:
            driver.close()
        anonymous = Driver(facade, server.base_url, names, fast_config(verify=files["ca"]))
        try:
            with pytest.raises(ServiceConnectionError):
                anonymous("get", "/echo")
        finally:
            anonymous.close()


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("verify", "verify: cannot load the CA bundle"),
        ("cert", "cert: no such file"),
        ("key", "cert (key): no such file"),
        ("bad_pem", "cert: cannot load"),
    ],
)
def test_tls_files_are_checked_when_the_client_is_built(
    facade: str, tls_files: dict[str, str], names: Names, tmp_path: Path, field: str, message: str
) -> None:
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    overrides: dict[str, Any] = {
        "verify": {"verify": missing},
        "cert": {"cert": (missing, tls_files["client_key"])},
        "key": {"cert": (tls_files["client_cert"], missing)},
        "bad_pem": {"cert": str(not_pem)},
    }[field]
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        Driver(facade, "https://127.0.0.1:1", names, fast_config(**overrides))
    assert str(missing if field != "bad_pem" else not_pem) in str(info.value)


def test_head_of_a_large_resource_is_not_refused(make: Any) -> None:
    call = make(fast_config(max_response_bytes=1000))
    response = call("request_raw", "HEAD", "/large", params={"bytes": "100000"})
    assert response.headers["content-length"] == "100000"
    assert response.content == b""


# --- auth= -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (("user", "pa:ss"), "Basic dXNlcjpwYTpzcw=="),
        (BasicAuth("user", "pa:ss"), "Basic dXNlcjpwYTpzcw=="),
        (BearerAuth("t0ken"), "Bearer t0ken"),
    ],
)
def test_auth_sends_a_fixed_credential_per_call_or_per_client(
    make: Any, auth: Any, expected: str
) -> None:
    call = make()
    assert call("get", "/echo", auth=auth)["headers"]["authorization"] == expected
    assert "authorization" not in call("get", "/echo")["headers"]
    client_wide = make(auth=auth)
    assert client_wide("get", "/echo")["headers"]["authorization"] == expected


def test_an_auth_callable_signs_every_attempt_afresh(make: Any, names: Names) -> None:
    tokens = iter(["t1", "t2", "t3"])
    signed: list[str] = []

    def sign(request: Request) -> dict[str, str]:
        token = next(tokens)
        signed.append(f"{request.method} {request.url.split('?')[0].rsplit('/', 1)[1]}")
        return {"Authorization": f"Bearer {token}"}

    call = make()
    with testing.no_wait():
        echo = call("get", "/flaky", params={"first": "1", "key": names.key("sign")}, auth=sign)
    # The retry went out with a new token: a refreshed credential reaches the server.
    assert echo["headers"]["authorization"] == "Bearer t2"
    assert signed == ["GET flaky", "GET flaky"]


def test_an_auth_callable_that_sets_the_header_on_the_request_signs_that_call_only(
    make: Any,
) -> None:
    """httpx's ``auth_flow`` sets ``request.headers[...]``: a callable written that way signs
    its own attempt, and its credential never rides along on the client's other calls."""

    def set_in_place(request: Request) -> dict[str, str]:
        request.headers["Authorization"] = "Bearer alice-secret"
        return {}

    call = make()
    signed = call("get", "/echo", auth=set_in_place)
    assert signed["headers"]["authorization"] == "Bearer alice-secret"
    assert "authorization" not in call("get", "/echo")["headers"]
    assert "authorization" not in call("get", "/echo", headers={"X-A": "1"})["headers"]


def test_a_bad_auth_is_refused_before_anything_is_sent(make: Any) -> None:
    call = make()
    with pytest.raises(TypeError, match="auth must be"):
        call("get", "/echo", auth=42)
    with pytest.raises(ValueError, match="printable ASCII") as info:
        call("get", "/echo", auth=BearerAuth("s3cret\n"))
    assert "s3cret" not in str(info.value)


async def _token_headers(request: Request) -> dict[str, str]:
    return {"Authorization": "Bearer from-a-coroutine"}


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_an_async_auth_callable_is_refused_with_a_reason(make: Any) -> None:
    # The core signs each attempt inside the call, synchronously: a coroutine function
    # would send no credential at all, so it is refused (per call and per client) before
    # anything is sent, and a callable returning an awaitable leaves no coroutine behind.
    call = make()
    with pytest.raises(TypeError, match="not a coroutine function"):
        call("get", "/echo", auth=_token_headers)
    with pytest.raises(TypeError, match="not a coroutine function"):
        make(auth=_token_headers)
    with pytest.raises(TypeError, match="not a coroutine function"):
        call("get", "/echo", auth=lambda request: _token_headers(request))


# --- head(), options(), per-call overrides, elapsed and reason_phrase ------------------------


def test_head_and_options_return_the_response(make: Any) -> None:
    call = make()
    head = call("head", "/echo")
    assert (head.status_code, head.content, head.reason_phrase) == (200, b"", "OK")
    options = call("options", "/echo")
    assert options.json()["method"] == "OPTIONS"
    assert options.elapsed > timedelta(0)
    created = call("request_raw", "GET", "/reply", params={"status": "201"})
    assert created.reason_phrase == "Created"


def test_retries_and_timeouts_are_overridden_per_call(make: Any, names: Names) -> None:
    call = make(fast_config(max_retries=3))
    with testing.no_wait(), pytest.raises(ServiceResponseError) as info:
        call("get", "/status/503", max_retries=1)
    assert info.value.attempts == 1
    with pytest.raises(ServiceTimeoutError):
        call("get", "/slow", params={"seconds": "3"}, timeout=0.2, max_retries=1)
    for bad in ({"max_retries": 0}, {"connect_timeout": -1}, {"timeout": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            call("get", "/echo", **bad)


# --- response_model= ---------------------------------------------------------------------


class EchoModel(BaseModel):
    method: str
    path: str


@dataclass
class EchoRecord:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    calls: int


class WrongEcho(BaseModel):
    method: str
    calls: list[int]


def test_response_model_validates_the_body_into_a_model_or_a_dataclass(make: Any) -> None:
    call = make()
    model = call("get", "/echo", response_model=EchoModel)
    assert model == EchoModel(method="GET", path="/echo")
    record = call("post", "/echo", json={"a": 1}, response_model=EchoRecord)
    assert isinstance(record, EchoRecord)
    assert record.body == {"a": 1}
    with pytest.raises(ServiceDecodeError, match="not a WrongEcho: field 'calls'"):
        call("get", "/echo", response_model=WrongEcho)
    assert call.breaker == "closed"


def test_response_model_on_a_raw_call_is_refused_not_ignored(
    make: Any, http_server: ServerProcess, names: Names
) -> None:
    # head(), options() and request_raw() return the response: a model given to them was
    # dropped without a word, and the caller got a ServiceResponse where a model was due.
    call = make()
    key = names.key("raw-model")
    for method, args in (("head", ()), ("options", ()), ("request_raw", ("GET",))):
        with pytest.raises(TypeError, match="response_model"):
            call(method, *args, "/echo", params={"key": key}, response_model=EchoModel)
    assert http_server.calls(key) == []


# --- tenacity strategies in ClientConfig -------------------------------------------------


def test_a_tenacity_retry_predicate_decides_within_the_core_rules(make: Any, names: Names) -> None:
    waits: list[int] = []

    def wait(state: RetryCallState) -> float:
        waits.append(state.attempt_number)
        return 0.0

    call = make(
        fast_config(
            max_retries=4,
            retry=retry_if_result(lambda echo: echo["calls"] < 3),
            wait=wait,
        )
    )
    echo = call("get", "/echo", params={"key": names.key("until")})
    assert echo["calls"] == 3
    assert waits == [1, 2]
    # A POST that reached the server is never repeated, whatever the predicate says.
    post = call("post", "/echo", params={"key": names.key("post")}, json={})
    assert post["calls"] == 1
    only_timeouts = make(fast_config(retry=retry_if_exception_type(ServiceTimeoutError), wait=wait))
    with pytest.raises(ServiceResponseError) as info:
        only_timeouts("get", "/status/503")
    assert info.value.attempts == 1


def test_a_retry_predicate_that_raises_keeps_the_targets_failure_counted(make: Any) -> None:
    # The caller's strategy fails (its bug, raised as it is, as tenacity would); the
    # target's 503 it was asked about still counts against the target.
    def broken(state: RetryCallState) -> bool:
        raise KeyError("state")

    call = make(fast_config(retry=broken, circuit_breaker_fail_max=2))
    for _ in range(2):
        with pytest.raises(KeyError):
            call("get", "/status/503")
    assert call.breaker == "open"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seconds", [math.inf, 1e12])
def test_a_wait_no_sleep_can_take_is_refused_alike_on_both_facades(
    make: Any, seconds: float
) -> None:
    # Without the check the sync facade raised OverflowError from time.sleep and the async
    # one slept for ever; the strategy's value is the caller's mistake, named as such.
    call = make(fast_config(wait=lambda state: seconds, circuit_breaker_fail_max=1))
    with pytest.raises(ValueError, match="the wait= strategy returned"):
        call("get", "/status/503")
    assert call.breaker == "open"
