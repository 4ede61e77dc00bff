"""Serve the REST service: ``python -m examples.rest_service --port 8000``.

With ``REDIS_URL`` set, every change invalidates the shared Redis cache (prefix
``assistant_cache``); without it, the invalidation goes to an in-memory cache nobody else
reads, which is only useful to try the endpoints.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: make the repository root importable, as `python -m` does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import os

from commclient.cache import create_async_cache
from examples.rest_service.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.rest_service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    import uvicorn

    cache = create_async_cache(os.environ.get("REDIS_URL") or None, prefix="assistant_cache")
    where = f"Redis at {os.environ['REDIS_URL']}" if os.environ.get("REDIS_URL") else "in memory"
    print(f"REST service: http://{args.host}:{args.port} (cache invalidation: {where})", flush=True)
    uvicorn.run(create_app(cache=cache), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
