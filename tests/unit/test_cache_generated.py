"""The sync Redis driver is generated from the async one and must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_sync", ROOT / "scripts/generate_sync.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_driver_is_generated_from_the_async_one() -> None:
    module = generator()
    expected = module.generate(module.SOURCE.read_text())
    assert module.TARGET.read_text() == expected, "run: python scripts/generate_sync.py"


def test_generation_removes_every_async_construct() -> None:
    source = (
        '"""Doc of AsyncRedisCache."""\n'
        "import redis.asyncio\n"
        "from collections.abc import Awaitable, Callable\n"
        "from . import _io_async as io\n\n\n"
        "class AsyncRedisCache:\n"
        "    async def aclose(self, f: Callable[[], Awaitable[dict[str, int]]]) -> None:\n"
        "        async with io.renewing(1.0, f):\n"
        "            await f()\n"
        "        x: redis.asyncio.Redis\n"
    )
    module = generator()
    generated = module.generate(source)
    code = generated.removeprefix(module.HEADER)
    assert "async" not in code
    assert "await" not in generated
    assert "Awaitable" not in generated
    assert "Callable[[], dict[str, int]]" in generated
    assert "def close(self" in generated
    assert "x: redis.Redis" in generated
    compile(generated, "generated", "exec")
