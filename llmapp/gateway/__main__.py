"""`python -m llmapp.gateway [--host H] [--port P]`: the gateway, configured as the platform is.

It reads the platform's own configuration (llmapp/config.py: REDIS_URL, or the embedded Redis that
`python app.py` publishes in the instance folder; SECRET_KEY or LLMAPP_SECRETS_KEY, whose derived key
checks the routes the platform signs; LLMAPP_MAX_REQUEST_MB). Several may run, on one or many
machines, behind a load balancer: each reads the same routes.
"""

import argparse
import logging
import os
import sys

import redis.asyncio
from aiohttp import web

from .. import ROOT
from .. import config as llmapp_config
from .server import create_gateway
from .table import route_key

DEFAULT_PORT = 5001
# Commands never hang a request on an unreachable Redis; the channel's reader waits as long as it likes.
REDIS_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmapp.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("LLMAPP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMAPP_GATEWAY_PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    try:
        config = llmapp_config.load(os.environ.get("LLMAPP_INSTANCE_PATH") or str(ROOT / "instance"))
    except RuntimeError as e:  # production without SECRET_KEY
        sys.exit(str(e))
    if not config.get("REDIS_URL"):
        sys.exit("REDIS_URL is not set and no embedded Redis is running: the gateway reads its routes from Redis.")
    logging.basicConfig(level=os.environ.get("LLMAPP_GATEWAY_LOG_LEVEL", "WARNING"), format="%(levelname)s %(message)s")
    try:
        import uvloop  # a faster event loop, where it is installed
    except ImportError:
        uvloop = None
    url = config["REDIS_URL"]
    gateway = create_gateway(
        redis.asyncio.Redis.from_url(url, socket_keepalive=True, **REDIS_TIMEOUTS),
        redis.asyncio.Redis.from_url(url, socket_keepalive=True, socket_connect_timeout=2, health_check_interval=30),
        route_key(config.get("SECRETS_KEY") or config["SECRET_KEY"]),
        int(float(config["MAX_REQUEST_MB"]) * 1024 * 1024),
    )
    print(f"llmapp gateway on http://{args.host}:{args.port}/v1", flush=True)
    # No access log: a member's paths and headers stay out of the platform's output. A client that
    # leaves cancels its request, so a replica's generation for it stops too.
    web.run_app(
        gateway,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=10,  # requests in flight get this long at a stop (app.py waits 12 s)
        loop=uvloop.new_event_loop() if uvloop else None,
    )


if __name__ == "__main__":
    main()
