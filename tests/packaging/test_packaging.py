"""The built package as a user gets it: wheel and sdist contents, and each extra in a fresh venv.

Run by the ``packaging`` tox environment (``tox -e packaging``): builds the wheel and the
sdist once with ``uv build``, then for each extra makes a fresh venv (``uv venv``), installs
the wheel with that extra only, and runs ``extra_check.py`` there with ``python -I``: the
package imports from the venv, one real action works, and what the extra must not bring is
absent. Needs ``uv`` on ``PATH`` and, for the redis extra, ``redis-server``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._redis_server import RedisServer, redis_server_executable

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("extra_check.py")
EXTRAS = ["core", "sync", "async", "redis", "scheduler", "otel"]


def uv() -> str:
    executable = shutil.which("uv")
    if executable is None:
        pytest.fail("uv is not installed (the packaging tox environment installs it)")
    return executable


def run(*command: str | Path, cwd: Path = REPO_ROOT, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # No --sdist/--wheel: the wheel is built from the sdist, which proves the sdist builds
    # (and leaves no build/ directory in the clone).
    run(uv(), "build", "--out-dir", out, REPO_ROOT)
    return out


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("commclient-*.whl")
    return found


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if redis_server_executable() is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server.url


def test_the_wheel_carries_the_license_and_the_typed_marker(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    for package in ("commclient", "compat", "cron_migration"):
        assert f"{package}/py.typed" in names
    assert "commclient/monitoring/service-communication.json" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]


def test_the_sdist_carries_the_license_tests_and_examples(dist: Path) -> None:
    (sdist,) = dist.glob("commclient-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    for expected in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "tests/unit/test_extras_hints.py",
        "tests/integration/conftest.py",
        "examples/rest_service/__init__.py",
    ):
        assert expected in names, f"{expected} is not in the sdist"
    # Every file of the test suite: its data and notes too, not only its code.
    tests = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "tests").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert not tests - names, f"not in the sdist: {sorted(tests - names)}"


@pytest.mark.parametrize("extra", EXTRAS)
def test_each_extra_installs_alone_and_works(
    extra: str, wheel: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    venv = tmp_path / f"venv-{extra}"
    run(uv(), "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    requirement = f"{wheel}" if extra == "core" else f"commclient[{extra}] @ {wheel.as_uri()}"
    run(uv(), "pip", "install", "--quiet", "--python", python, requirement)
    arguments = [extra]
    if extra == "redis":
        arguments.append(request.getfixturevalue("redis_url"))
    output = run(python, "-I", CHILD, *arguments, cwd=tmp_path)
    assert output.strip().splitlines()[-1].startswith(f"OK {extra}:"), output
    print(output.strip())


def test_the_extras_checked_are_the_extras_the_wheel_declares(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    declared = {
        line.partition(":")[2].strip()
        for line in archive.read(metadata).decode().splitlines()
        if line.startswith("Provides-Extra:")
    }
    # all: the union of the others; bench, docs and test: from a clone, for this repository's
    # own benchmarks, documentation and tests.
    assert declared - {"all", "bench", "docs", "test"} == set(EXTRAS) - {"core"}, declared


def test_the_test_extra_installs_every_module_the_tests_import(wheel: Path, tmp_path: Path) -> None:
    # `pip install -e '.[all,test]'` then `pytest tests/` (CONTRIBUTING.md): nothing may be
    # skipped, or fail, for want of a package.
    venv = tmp_path / "venv-test"
    run(uv(), "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    run(
        uv(),
        "pip",
        "install",
        "--quiet",
        "--python",
        python,
        f"commclient[test] @ {wheel.as_uri()}",
    )
    output = run(python, "-I", Path(__file__).with_name("tests_imports.py"), REPO_ROOT / "tests")
    print(output.strip())
