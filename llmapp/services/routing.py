"""The gateway's routes: what the platform tells every gateway about each application, in Redis.

A route (llmapp/gateway/table.py reads it) is derived from the application's row: its name, owner,
status and replicas, so it is published after every change of those is committed (a transition, an
edit, a delete) and announced on ``keyspace.routes_changed()``. When Redis is unreachable at that
moment the reconcile publishes it on its next round (``publish_all``): the row is the truth.
"""

import json

import redis
from flask import current_app

from .. import keyspace, queues
from ..extensions import db
from ..models import Application
from . import lifecycle

ROUTE_COLUMNS = (
    Application.id, Application.name, Application.created_by_id, Application.status, Application.endpoint,
    Application.deploy_id, Application.deployed_release,
)  # fmt: skip


def route(application) -> dict:
    """The application's route as the gateways read it (``application``: its row, or ROUTE_COLUMNS)."""
    replicas = []
    if application.status in (lifecycle.RUNNING, lifecycle.STOPPING) and application.endpoint:
        replicas.append(
            {
                "id": application.deploy_id,
                "url": application.endpoint.removesuffix("/v1"),
                # A stopping server finishes what it has; the gateway sends it nothing new.
                "draining": application.status == lifecycle.STOPPING,
            }
        )
    return {
        "id": str(application.id),
        "name": application.name,
        "owner_id": application.created_by_id,
        "status": application.status,
        "release": application.deployed_release,
        "replicas": replicas,
    }


def _encoded(application) -> bytes:
    return json.dumps(route(application), sort_keys=True).encode()


def publish(application_id) -> None:
    """Publish the application's route as its row says now (removed when the row is gone)."""
    application = db.session.execute(db.select(*ROUTE_COLUMNS).where(Application.id == application_id)).first()
    connection = queues.connection()
    try:
        with connection.pipeline() as pipe:
            if application is None:
                pipe.hdel(keyspace.routes(), str(application_id))
            else:
                pipe.hset(keyspace.routes(), str(application_id), _encoded(application))
            pipe.publish(keyspace.routes_changed(), str(application_id))
            pipe.execute()
    except redis.RedisError as e:
        current_app.logger.warning("the route of application %s waits for the reconcile: %s", application_id, e)


def publish_all() -> int:
    """Make the published routes match the rows (the reconcile's repair). Returns how many changed."""
    connection = queues.connection()
    published = connection.hgetall(keyspace.routes())
    wanted = {str(a.id).encode(): _encoded(a) for a in db.session.execute(db.select(*ROUTE_COLUMNS))}
    changed = {k: v for k, v in wanted.items() if published.get(k) != v}
    gone = [k for k in published if k not in wanted]
    if changed or gone:
        with connection.pipeline() as pipe:
            if changed:
                pipe.hset(keyspace.routes(), mapping=changed)
            if gone:
                pipe.hdel(keyspace.routes(), *gone)
            pipe.publish(keyspace.routes_changed(), "*")
            pipe.execute()
    return len(changed) + len(gone)


def gateway_url() -> str:
    """The gateway's base URL as clients use it (ends in /v1)."""
    return current_app.config["GATEWAY_URL"] or (
        f"http://{current_app.config['ADVERTISE_HOST']}:{current_app.config['GATEWAY_PORT']}/v1"
    )
