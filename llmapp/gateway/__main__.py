"""`python -m llmapp.gateway [--host H] [--port P]`: the gateway, on the platform's Redis (REDIS_URL).

Several may run (on one or many machines, behind a load balancer): each reads the same routes.
"""

import argparse
import logging
import os
import sys

import redis.asyncio
from aiohttp import web

from .server import create_gateway

DEFAULT_PORT = 5001


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmapp.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("LLMAPP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMAPP_GATEWAY_PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    url = os.environ.get("REDIS_URL")
    if not url:
        sys.exit("REDIS_URL is not set: the gateway reads its routes from the platform's Redis.")
    logging.basicConfig(level=os.environ.get("LLMAPP_GATEWAY_LOG_LEVEL", "WARNING"), format="%(levelname)s %(message)s")
    try:
        import uvloop  # a faster event loop, where it is installed
    except ImportError:
        uvloop = None
    connection = redis.asyncio.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True)
    print(f"llmapp gateway on http://{args.host}:{args.port}/v1", flush=True)
    # No access log: a member's paths and headers stay out of the platform's output.
    web.run_app(
        create_gateway(connection),
        host=args.host,
        port=args.port,
        access_log=None,
        shutdown_timeout=10,  # requests in flight get this long at a stop (app.py waits 12 s)
        print=None,
        loop=uvloop.new_event_loop() if uvloop else None,
    )


if __name__ == "__main__":
    main()
