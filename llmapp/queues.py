"""Redis and RQ queues of the platform. One connection per app, made on first use."""

import socket

import redis
from flask import current_app
from rq import Queue

DEFAULT_QUEUE = "default"


def connection() -> redis.Redis:
    """The platform's Redis (REDIS_URL, or the embedded one `python app.py` publishes)."""
    app = current_app._get_current_object()
    if "redis" not in app.extensions:
        url = app.config.get("REDIS_URL")
        if not url:
            raise RuntimeError("REDIS_URL is not set and no embedded Redis is running: start `python app.py`.")
        app.extensions["redis"] = redis.Redis.from_url(url)
    return app.extensions["redis"]


def this_host() -> str:
    """This machine's name among the workers: LLMAPP_HOSTNAME, else the host name."""
    return current_app.config.get("HOSTNAME") or socket.gethostname()


def host_queue_name(host: str) -> str:
    """Jobs for processes on ``host`` (stop, reconcile) go to the workers of that host."""
    return f"host:{host}"


def queue(name: str = DEFAULT_QUEUE) -> Queue:
    return Queue(name, connection=connection())
