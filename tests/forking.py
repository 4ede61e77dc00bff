"""Run a function in a real ``os.fork()`` child and get its exit code back, for tests."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable

import pytest

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_forked_child(body: Callable[[], int], timeout: float = 30.0) -> int:
    """``body()``'s return value as the child's exit code (99 if it raised).

    A child that does not finish within ``timeout`` (a lock inherited held, say) is killed
    and fails the test.
    """
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() while other threads run; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish within {timeout} s")
