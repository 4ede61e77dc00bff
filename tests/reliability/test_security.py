"""Security: no pickle, no secret in a log line or an error, Redis AUTH and TLS, bounded metric
labels, and an invalidation middleware that a client cannot aim at other keys."""

from __future__ import annotations

import ast
import asyncio
import logging
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from commclient import AsyncServiceClient, ClientConfig, ServiceClientError, SyncServiceClient
from commclient.asgi import CacheInvalidationMiddleware, InvalidationRule
from commclient.cache import AsyncRedisCache, CacheConfig, SyncRedisCache
from tests.http_server import ServerProcess
from tests.redis_server import RedisServer, free_port, require_redis_server
from tests.reliability._results import Row, sized

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("commclient", "compat", "cron_migration", "examples")
UNSAFE_MODULES = {
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "shelve",
    "marshal",
}
# pickle itself may serialise (cron_migration asks whether a persistent job store could keep
# a job's arguments), never deserialise: reading a pickle runs what it says.
PICKLE_READERS = {"load", "loads", "Unpickler"}


# -- no pickle -----------------------------------------------------------------------------


def test_no_pickle_anywhere(row: Row) -> None:
    """No module of the packages or the examples reads a pickle or imports a pickle-like
    deserializer (``pickle.dumps`` may serialise: it runs nothing)."""
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Name) and node.id in UNSAFE_MODULES:
                names = [node.id]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "pickle"
                and node.attr in PICKLE_READERS
            ):
                names = [f"pickle.{node.attr}"]
            if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                names = [f"pickle.{alias.name}" for alias in node.names]
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES or (
                    name.startswith("pickle.") and name.rpartition(".")[2] in PICKLE_READERS
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    row.scenario = "S1"
    row.title = "No pickle anywhere"
    row.load = f"{len(files)} Python files of {', '.join(PACKAGES)}"
    row.faults = "-"
    row.outcome = f"{len(found)} imports or uses of {', '.join(sorted(UNSAFE_MODULES))}"
    row.lost = "-"
    assert len(files) > 20
    assert not found, found


# -- secrets -------------------------------------------------------------------------------

SECRETS = (
    "S3cr3tUserinfo",
    "S3cr3tApiKey",
    "S3cr3tBearer",
    "S3cr3tToken",
    "S3cr3tParamKey",
    "S3cr3tPassword",
)


class Capture(logging.Handler):
    """Every record of every logger, with all its fields (extras included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.transport_texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        ours = record.name.split(".")[0] in PACKAGES
        texts = self.texts if ours else self.transport_texts
        texts.append(record.getMessage())
        texts.append(repr(record.__dict__))
        if record.exc_info and record.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(record.exc_info[1])))


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _calls(http_server: ServerProcess, refused: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(base URL, path, keywords) of calls that succeed, retry, fail and time out."""
    userinfo = f"http://svc-user:S3cr3tUserinfo@127.0.0.1:{http_server.port}"
    secret_params = {
        "token": "S3cr3tToken",
        "api_key": "S3cr3tParamKey",
        "password": "S3cr3tPassword",
    }
    bearer = {"Authorization": "Bearer S3cr3tBearer"}
    return [
        (userinfo, "/echo", {"params": secret_params, "headers": bearer}),
        (userinfo, "/flaky", {"params": {"status": "503", **secret_params}, "headers": bearer}),
        (userinfo, "/html/404", {"params": secret_params, "headers": bearer}),
        (userinfo, "/html/502", {"params": secret_params}),
        (userinfo, "/slow", {"params": {"seconds": "3", **secret_params}}),
        (userinfo, "/drop", {"params": {"how": "reset", **secret_params}}),
        (
            f"http://svc-user:S3cr3tUserinfo@127.0.0.1:{refused}",
            "/echo",
            {"params": secret_params, "headers": bearer},
        ),
    ]


def _run_calls(facade: str, calls: list[tuple[str, str, dict[str, Any]]]) -> list[BaseException]:
    config = ClientConfig(
        timeout=0.5,
        connect_timeout=0.5,
        max_retries=2,
        retry_min_wait=0.01,
        retry_max_wait=0.02,
        default_headers=(("X-Api-Key", "S3cr3tApiKey"),),
        circuit_breaker_fail_max=1_000,
    )
    errors: list[BaseException] = []
    for index, (base, path, keywords) in enumerate(calls):
        names = {"service_name": "secrets", "target_service": f"secrets-{facade}-{index}"}
        try:
            if facade == "sync":
                with SyncServiceClient(base, config=config, **names) as client:
                    client.get(path, **keywords)
            else:

                async def call(
                    base: str = base, path: str = path, kw: Any = keywords, names: Any = names
                ) -> None:
                    async with AsyncServiceClient(base, config=config, **names) as client:
                        await client.get(path, **kw)

                asyncio.run(call())
        except BaseException as error:
            errors.append(error)
    return errors


def _leaks(texts: list[str]) -> list[str]:
    return [f"{secret} in {text[:200]!r}" for text in texts for secret in SECRETS if secret in text]


def _surface(error: BaseException) -> list[str]:
    texts = [str(error), repr(error)]
    if isinstance(error, ServiceClientError):
        texts.append(error.url)
    return texts


def _chain(error: BaseException) -> list[str]:
    texts = []
    cause: BaseException | None = error.__cause__ or error.__context__
    while cause is not None:
        texts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    texts.append("".join(traceback.format_exception(error)))
    return texts


@pytest.fixture(scope="module")
def http_server() -> Iterator[ServerProcess]:
    with ServerProcess() as server:
        yield server


@pytest.mark.parametrize(
    "facade",
    [
        pytest.param("sync", marks=pytest.mark.facade_sync),
        pytest.param("async", marks=pytest.mark.facade_async),
    ],
)
def test_secrets_stay_out_of_logs_and_errors(
    http_server: ServerProcess, capture: Capture, facade: str, row: Row
) -> None:
    """Credentials in the URL's userinfo, in headers and in query parameters appear in no log
    line of the library (any level, any field) and in no error's message, repr or URL."""
    errors = _run_calls(facade, _calls(http_server, free_port()))
    surface = [text for error in errors for text in _surface(error)]
    leaks = _leaks(capture.texts) + _leaks(surface)
    row.scenario = "S2"
    row.title = f"Secrets in logs and errors ({facade})"
    row.load = "7 calls: success, retried 503, 404, 502 page, timeout, reset, refused"
    row.faults = (
        "URL userinfo, Authorization and X-Api-Key headers, token/api_key/password query "
        "parameters; every log record at DEBUG captured with all its fields"
    )
    row.outcome = (
        f"{len(capture.texts)} log texts and {len(surface)} error texts searched: "
        f"{len(leaks)} secrets found"
    )
    row.lost = "-"
    assert len(errors) == 6, [repr(e) for e in errors]
    assert all(isinstance(e, ServiceClientError) for e in errors), [repr(e) for e in errors]
    assert capture.texts
    assert not leaks, leaks[:5]


@pytest.mark.parametrize(
    ("facade", "logger"),
    [
        pytest.param("sync", "urllib3", marks=pytest.mark.facade_sync),
        pytest.param("async", "httpx", marks=pytest.mark.facade_async),
    ],
)
def test_secrets_stay_out_of_transport_logs(
    http_server: ServerProcess, capture: Capture, facade: str, logger: str
) -> None:
    """What the transports under the facades log reaches the same handlers as our own lines."""
    _run_calls(facade, _calls(http_server, free_port()))
    assert capture.transport_texts
    assert not _leaks(capture.transport_texts)


@pytest.mark.parametrize(
    "facade",
    [
        pytest.param("sync", marks=pytest.mark.facade_sync),
        pytest.param("async", marks=pytest.mark.facade_async),
    ],
)
def test_secrets_stay_out_of_chained_exceptions(http_server: ServerProcess, facade: str) -> None:
    """The transport's exception chained as ``__cause__`` and the formatted traceback do not
    carry the secrets either (they end up in log aggregators with ``logger.exception``)."""
    errors = _run_calls(facade, _calls(http_server, free_port()))
    leaks = _leaks([text for error in errors for text in _chain(error)])
    assert not leaks, leaks[:5]


@pytest.mark.parametrize(
    "facade",
    [
        pytest.param("sync", marks=pytest.mark.facade_sync),
        pytest.param("async", marks=pytest.mark.facade_async),
    ],
)
def test_secret_query_written_into_the_path(
    http_server: ServerProcess, capture: Capture, facade: str
) -> None:
    base = f"http://127.0.0.1:{http_server.port}"
    errors = _run_calls(facade, [(base, "/flaky?status=503&token=S3cr3tToken", {})])
    assert len(errors) == 1
    assert not _leaks(capture.texts + _surface(errors[0]))


# -- Redis AUTH and TLS --------------------------------------------------------------------

PASSWORD = "S3cr3tRedisPassword"


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[int]:
    executable = require_redis_server()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="redis-auth-")
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--requirepass",
            PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        process.kill()
        process.wait()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    give_up = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"redis-server on {port} did not start") from None
            time.sleep(0.05)


@pytest.mark.redis_server
def test_redis_auth(redis_with_password: int, capture: Capture, row: Row) -> None:
    """A password in the URL authenticates the sync and async caches; a wrong one makes reads
    misses, and neither password reaches a log line."""
    port = redis_with_password
    good = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    bad = f"redis://:WrongS3cr3tPassword@127.0.0.1:{port}/0"
    config = CacheConfig(operation_timeout=2.0)
    sync_cache = SyncRedisCache.from_url(good, prefix="auth", config=config)
    try:
        assert sync_cache.set("k", {"v": 1})
        assert sync_cache.get("k") == {"v": 1}
    finally:
        sync_cache.close()

    async def async_side() -> tuple[Any, Any]:
        cache = AsyncRedisCache.from_url(good, prefix="auth", config=config)
        wrong = AsyncRedisCache.from_url(bad, prefix="auth", config=config)
        try:
            return await cache.get("k"), await wrong.get("k")
        finally:
            await cache.aclose()
            await wrong.aclose()

    with_password, with_wrong_password = asyncio.run(async_side())
    leaked = [t[:200] for t in capture.texts if PASSWORD in t or "WrongS3cr3tPassword" in t]
    row.scenario = "S3"
    row.title = "Redis AUTH (redis-server --requirepass)"
    row.load = "set/get through SyncRedisCache and AsyncRedisCache from redis://:password@ URLs"
    row.faults = "a wrong password"
    row.outcome = (
        f"right password: {with_password!r}; wrong password: {with_wrong_password!r} (a miss); "
        f"{len(leaked)} log lines with a password"
    )
    row.lost = "-"
    assert with_password == {"v": 1}
    assert with_wrong_password is None
    assert not leaked, leaked


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    csr = directory / "server.csr"
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    commands = [
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            files["ca-key"],
            "-out",
            files["ca"],
        ],
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            files["server-key"],
            "-out",
            csr,
        ],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            files["ca"],
            "-CAkey",
            files["ca-key"],
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            extensions,
            "-out",
            files["server"],
        ],
    ]
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return files


@pytest.mark.redis_server
def test_rediss_url(row: Row, tmp_path: Path) -> None:
    """A ``rediss://`` URL reaches a TLS-only redis-server, with its CA passed in the URL."""
    executable = require_redis_server()
    files = _certificates(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--tls-cert-file",
            str(files["server"]),
            "--tls-key-file",
            str(files["server-key"]),
            "--tls-ca-cert-file",
            str(files["ca"]),
            "--tls-auth-clients",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca']}"
        cache = SyncRedisCache.from_url(
            url, prefix="tls", config=CacheConfig(operation_timeout=2.0)
        )
        try:
            stored = cache.set("k", {"over": "tls"})
            value = cache.get("k")
        finally:
            cache.close()

        async def async_side() -> Any:
            async_cache = AsyncRedisCache.from_url(
                url, prefix="tls", config=CacheConfig(operation_timeout=2.0)
            )
            try:
                return await async_cache.get("k")
            finally:
                await async_cache.aclose()

        async_value = asyncio.run(async_side())
    finally:
        process.kill()
        process.wait()
    row.scenario = "S4"
    row.title = "rediss:// (TLS-only redis-server, own CA)"
    row.load = "set/get through SyncRedisCache and AsyncRedisCache"
    row.faults = "-"
    row.outcome = f"stored {stored}, read back {value!r} (sync) and {async_value!r} (async)"
    row.lost = "-"
    assert stored
    assert value == {"over": "tls"}
    assert async_value == {"over": "tls"}


# -- metric labels -------------------------------------------------------------------------


@pytest.mark.facade_async
def test_metric_labels_stay_bounded(http_server: ServerProcess, row: Row) -> None:
    """Distinct URLs (ids, words, query strings; 10,000 at full size) give a bounded
    ``route`` label."""
    registry = CollectorRegistry()
    total = sized(2_000, 10_000)
    config = ClientConfig(max_endpoints=200)

    def path(index: int) -> str:
        kind = index % 4
        if kind == 0:
            return f"/echo/users/{index}"
        if kind == 1:
            return f"/echo/search/term{index}x"
        if kind == 2:
            return f"/echo/{index:032x}/x"
        return f"/echo/page-{index}?q={index}"

    async def run() -> None:
        gate = asyncio.Semaphore(32)
        async with AsyncServiceClient(
            http_server.base_url,
            service_name="labels",
            target_service="labels-target",
            config=config,
            registry=registry,
        ) as client:

            async def one(index: int) -> None:
                async with gate:
                    await client.get(path(index))

            await asyncio.gather(*(one(i) for i in range(total)))

    asyncio.run(run())
    label_sets: dict[str, set[tuple[str, ...]]] = {}
    endpoints: set[str] = set()
    for family in registry.collect():
        for sample in family.samples:
            label_sets.setdefault(family.name, set()).add(tuple(sorted(sample.labels.items())))
            if "route" in sample.labels:
                endpoints.add(sample.labels["route"])
    biggest = max(len(v) for v in label_sets.values())
    row.scenario = "S5"
    row.title = "Metric label cardinality"
    row.load = f"{total:,} GETs to distinct URLs (numeric ids, words with digits, hex ids, queries)"
    row.faults = "-"
    row.outcome = (
        f"{len(endpoints)} route label values (max_endpoints=200); largest family {biggest} series"
    )
    row.lost = "-"
    assert len(endpoints) <= 201, sorted(endpoints)[:20]
    assert biggest <= 201 * 20


# -- the ASGI middleware -------------------------------------------------------------------

SEGMENTS = st.text(
    alphabet=st.sampled_from([*"ab1*?[]\\{}!^-:%", "\u00e9", "\u4e2d"]),
    min_size=1,
    max_size=8,
)


@pytest.fixture(scope="module")
def redis_for_middleware() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.redis_server
@settings(
    max_examples=sized(40, 200),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(segment=SEGMENTS, others=st.lists(SEGMENTS, min_size=1, max_size=4))
def test_middleware_patterns_cannot_be_widened(
    redis_for_middleware: RedisServer, segment: str, others: list[str]
) -> None:
    """A POST to ``/api/users/<segment>`` invalidates that user's keys and no one else's,
    whatever glob characters, braces or unicode the segment holds; headers and the query
    cannot add anything."""
    others = [o for o in others if o != segment]
    rule = InvalidationRule("/api/users/{user_id}", patterns=("user:{user_id}:*",))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def run() -> tuple[Any, list[Any]]:
        cache = AsyncRedisCache.from_url(
            redis_for_middleware.url, prefix="mw", config=CacheConfig(operation_timeout=2.0)
        )
        try:
            await cache.invalidate("*")
            await cache.set(f"user:{segment}:profile", 1)
            for other in others:
                await cache.set(f"user:{other}:profile", 2)
            await cache.set("user:*:profile", 3)
            middleware = CacheInvalidationMiddleware(app, cache, [rule])
            scope = {
                "type": "http",
                "method": "POST",
                "path": f"/api/users/{segment}",
                "root_path": "",
                "query_string": b"pattern=*&invalidate=user:*",
                "headers": [(b"x-invalidate", b"user:*"), (b"x-cache-pattern", b"*")],
            }

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Any) -> None:
                return None

            await middleware(scope, receive, send)
            mine = await cache.get(f"user:{segment}:profile")
            theirs = [await cache.get(f"user:{other}:profile") for other in others]
            if segment != "*":
                theirs.append(await cache.get("user:*:profile"))
            return mine, theirs
        finally:
            await cache.aclose()

    mine, theirs = asyncio.run(run())
    assert mine is None
    assert None not in theirs, (segment, others, theirs)
