"""The shared bridge loop at the edges of a process: exit and fork, in child interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.facade_async

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a fresh interpreter; a hang fails the test through the timeout."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_exit_closes_what_a_with_block_left_open() -> None:
    result = run_script(
        """
        import asyncio
        import compat

        class Client:
            async def ping(self):
                return "pong"

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc_info):
                await asyncio.sleep(0)
                print("closed on its loop", flush=True)

        proxy = compat.sync_proxy(Client())
        proxy.__enter__()
        print(proxy.ping(), flush=True)
        # the script ends without leaving the block
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pong", "closed", "on", "its", "loop"]


def test_a_call_pending_at_exit_fails_with_a_clear_error_instead_of_hanging() -> None:
    result = run_script(
        """
        import asyncio, atexit, threading
        import compat

        outcome = []
        started = threading.Event()

        def report():
            # Registered before compat's own exit handler, so it runs after it.
            waiter.join(10)
            print("waiter got:", *outcome, flush=True)

        atexit.register(report)

        async def never_finishes():
            started.set()
            await asyncio.Event().wait()

        def wait_in_daemon_thread():
            try:
                compat.run_sync(never_finishes)
            except compat.BridgeStoppedError as exc:
                outcome.append(type(exc).__name__)
                outcome.append(str(exc))

        waiter = threading.Thread(target=wait_in_daemon_thread, daemon=True)
        waiter.start()
        started.wait(10)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "waiter got: BridgeStoppedError" in result.stdout
    assert "stopped while the call was pending" in result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_run_sync_a_proxy_and_a_shim_the_parent_used() -> None:
    # gunicorn --preload, multiprocessing, Celery prefork: the parent used every kind of
    # bridge before forking; in the child, whose copy of the bridge has no loop thread,
    # each must work on a bridge of the child's own instead of waiting forever.
    result = run_script(
        """
        import asyncio, os, signal, warnings
        import compat

        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running

        class Client:
            made_in = []

            def __init__(self):
                Client.made_in.append(os.getpid())

            async def pid(self):
                await asyncio.sleep(0)
                return os.getpid()

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc_info):
                print("closed in", "parent" if os.getpid() == parent else "child", flush=True)

        async def process_id():
            await asyncio.sleep(0)
            return os.getpid()

        parent = os.getpid()
        shim = compat.LegacyShim(Client, name="rest_client")
        fetch_pid = shim.function(name="fetch_pid")(Client.pid)
        proxy = compat.sync_proxy(Client())
        proxy.__enter__()
        assert compat.run_sync(process_id) == parent
        assert proxy.pid() == parent
        assert fetch_pid() == parent

        child = os.fork()
        if child == 0:
            signal.alarm(20)  # a hang fails the child instead of the test run
            me = os.getpid()
            try:
                works = (
                    compat.run_sync(process_id) == me
                    and proxy.pid() == me
                    and fetch_pid() == me
                    and Client.made_in[-1] == me  # the shim made a client of its own
                    and proxy.__exit__(None, None, None) is None  # the parent's block: not its own
                )
            except BaseException as exc:
                print("child failed:", repr(exc), flush=True)
                works = False
            os._exit(0 if works else 1)
        _, status = os.waitpid(child, 0)
        print("child exit code", os.waitstatus_to_exitcode(status), flush=True)
        proxy.__exit__(None, None, None)
        assert proxy.pid() == fetch_pid() == parent
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["child exit code 0", "closed in parent"], result.stdout


NON_DAEMON_CALLER = """
    import asyncio, threading
    import compat

    async def wait_for(seconds):
        await asyncio.sleep(seconds)
        return "served"

    def caller():
        # Returns once the main thread has ended: the interpreter is shutting down.
        threading.main_thread().join()
        print("non-daemon thread:", compat.run_sync(wait_for, 0.1), flush=True)
        try:
            compat.run_sync(wait_for, 3600, timeout=TIMEOUT)
        except TimeoutError:
            print("non-daemon thread: timed out", flush=True)

    # From Python 3.12 no thread can start once the main thread has ended, the bridge's
    # loop thread included: it is started while it still can.
    compat.start_bridge()
    threading.Thread(target=caller).start()
    print("main thread done", flush=True)
"""


def test_exit_waits_for_non_daemon_threads_whose_calls_the_bridge_still_serves() -> None:
    # Python joins non-daemon threads before it runs atexit handlers, compat's stop of the
    # bridge among them: a non-daemon thread's calls still run after the main thread ends.
    result = run_script(NON_DAEMON_CALLER.replace("TIMEOUT", "0.5"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "main thread done",
        "non-daemon thread: served",
        "non-daemon thread: timed out",
    ]


def test_a_non_daemon_thread_in_a_never_ending_call_keeps_the_interpreter_alive() -> None:
    # As the README says: the bridge cannot end such a call, since it is stopped only
    # after the non-daemon threads ended; `timeout=` is what bounds it (test above).
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(NON_DAEMON_CALLER.replace("TIMEOUT", "None"))],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "main thread done\n"
        assert process.stdout.readline() == "non-daemon thread: served\n"
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=3)
    finally:
        process.kill()
        process.communicate(timeout=30)
