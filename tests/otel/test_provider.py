"""Which tracer provider the library sees: none until one is set, whether in code or named
by the environment (``OTEL_PYTHON_TRACER_PROVIDER``, which the API loads on first use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHECK = """
import json
from opentelemetry import trace
from commclient._tracing import active_tracer

seen = [active_tracer() is not None]
if {set_in_code}:
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
seen.append(active_tracer() is not None)
print(json.dumps(seen))
"""


def _seen(set_in_code: bool, environment: dict[str, str]) -> list[bool]:
    env = {k: v for k, v in os.environ.items() if k != "OTEL_PYTHON_TRACER_PROVIDER"}
    result = subprocess.run(
        [sys.executable, "-c", _CHECK.format(set_in_code=set_in_code)],
        capture_output=True,
        text=True,
        env={**env, **environment},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen: list[bool] = json.loads(result.stdout)
    return seen


@pytest.mark.parametrize(
    ("set_in_code", "environment", "expected"),
    [
        (False, {}, [False, False]),
        (True, {}, [False, True]),
        (False, {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}, [True, True]),
        (False, {"OTEL_PYTHON_TRACER_PROVIDER": "default_tracer_provider"}, [False, False]),
    ],
)
def test_the_tracer_follows_the_provider_set(
    set_in_code: bool, environment: dict[str, str], expected: list[bool]
) -> None:
    assert _seen(set_in_code, environment) == expected
