"""Bridges between synchronous and asynchronous code during the migration to asyncio.

Sync code calling async code::

    from compat import run_sync, sync_proxy

    settings = run_sync(client.get, "/api/global-settings")    # one call
    with sync_proxy(CronRestClient(...)) as rest:               # a whole client
        reminders = rest.get_active_reminders()

Both run on one background event loop shared by the process (started on first use,
stopped at exit once the non-daemon threads have ended: see the README for what exit
does to calls still pending), never a new loop per call. Async code calling blocking code::

    from compat import run_blocking

    rows = await run_blocking(legacy_report, day)               # in a worker thread

Context variables, the correlation id among them, cross every bridge both ways.
:class:`LegacyShim` keeps old module-level client functions working on a new client.
Everything that needs anyio fails on use, not on import, with a message naming the
extra to install (``pip install 'commclient[async]'``).

Typing: ``run_sync`` and ``run_blocking`` keep the callee's parameter and result types.
``sync_proxy(client)`` is a ``SyncProxy[CronRestClient]`` whose methods mypy sees as
``Any``; for checked calls, write the blocking interface as a ``Protocol`` and annotate
``rest: CronRestApi = sync_proxy(client)``.
"""

import logging

from ._bridge import bridge_portal, start_bridge, stop_bridge
from ._errors import BridgeCancelledError, BridgeError, BridgeStoppedError, EventLoopRunningError
from ._legacy import LegacyMode, LegacyShim
from ._proxy import SyncProxy, proxy_type, sync_proxy
from ._run import blocking_limit, run_blocking, run_sync, set_blocking_limit

__all__ = [
    "BridgeCancelledError",
    "BridgeError",
    "BridgeStoppedError",
    "EventLoopRunningError",
    "LegacyMode",
    "LegacyShim",
    "SyncProxy",
    "blocking_limit",
    "bridge_portal",
    "proxy_type",
    "run_blocking",
    "run_sync",
    "set_blocking_limit",
    "start_bridge",
    "stop_bridge",
    "sync_proxy",
]

# With no logging set up, its records are not printed to stderr by the last resort.
logging.getLogger(__name__).addHandler(logging.NullHandler())
