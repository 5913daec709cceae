"""The gateway's routes: what the platform tells every gateway about each application, in Redis.

A route (llmapp/gateway/table.py reads it) is derived from the application's row: its name, owner,
status, running release and replicas, so it is published after every change of those is committed (a
transition, an edit, a delete) and announced on ``keyspace.routes_changed()``. It is signed (app servers
can write to Redis; they can't sign) and carries a version, the row's ``updated_at``: a publisher that
read the row earlier never overwrites a newer route. When Redis is unreachable at that moment the
reconcile publishes it on its next round (``publish_all``): the row is the truth.
"""

import json
import time
from datetime import UTC

import redis
from flask import current_app

from .. import keyspace, queues
from ..extensions import db
from ..gateway.table import route_key, sign, unsign
from ..models import Application
from . import lifecycle

# Write a route unless the one there is newer (ARGV: id, signed route, its version), and announce it.
_PUBLISH_NEWER = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
    local dot = string.find(current, '.', 1, true)
    local ok, old = pcall(cjson.decode, string.sub(current, (dot or 0) + 1))
    if ok and type(old) == 'table' and tonumber(old['version']) and tonumber(old['version']) > tonumber(ARGV[3]) then
        return 0
    end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

ROUTE_COLUMNS = (
    Application.id, Application.name, Application.created_by_id, Application.status, Application.endpoint,
    Application.deploy_id, Application.deployed_release, Application.updated_at,
)  # fmt: skip


def signing_key() -> bytes:
    """The key the gateways check routes and key routes with (they derive it from the same secret)."""
    return route_key(current_app.config.get("SECRETS_KEY") or current_app.config["SECRET_KEY"])


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
        "version": application.updated_at.replace(tzinfo=UTC).timestamp() if application.updated_at else 0,
        "replicas": replicas,
    }


def _signed(application, key: bytes) -> str:
    return sign(key, json.dumps(route(application), sort_keys=True))


def _write(connection, application_id: str, signed: str) -> None:
    version = json.loads(signed.partition(".")[2])["version"]
    connection.eval(_PUBLISH_NEWER, 2, keyspace.routes(), keyspace.routes_changed(), application_id, signed, version)


def _tombstone(application_id: str, key: bytes) -> str:
    return sign(key, json.dumps({"id": application_id, "status": "deleted", "version": time.time()}))


def publish(application_id) -> None:
    """Publish the application's route as its row says now (a tombstone when the row is gone)."""
    application = db.session.execute(db.select(*ROUTE_COLUMNS).where(Application.id == application_id)).first()
    connection, key = queues.connection(), signing_key()
    try:
        signed = _signed(application, key) if application is not None else _tombstone(str(application_id), key)
        _write(connection, str(application_id), signed)
    except redis.RedisError as e:
        current_app.logger.warning("the route of application %s waits for the reconcile: %s", application_id, e)


def publish_all() -> int:
    """Make the published routes match the rows (the reconcile's repair): each application's route,
    a tombstone for each one gone. Returns how many it wrote."""
    connection, key = queues.connection(), signing_key()
    published = {
        i.decode(errors="replace"): v.decode(errors="replace") for i, v in connection.hgetall(keyspace.routes()).items()
    }
    wanted = {str(a.id): _signed(a, key) for a in db.session.execute(db.select(*ROUTE_COLUMNS))}
    changed = [i for i, signed in wanted.items() if published.get(i) != signed]
    for application_id in changed:
        _write(connection, application_id, wanted[application_id])
    gone = [i for i, value in published.items() if i not in wanted and _still_route(key, value)]
    for application_id in gone:  # deleted while Redis was away, or written by someone else
        _write(connection, application_id, _tombstone(application_id, key))
    return len(changed) + len(gone)


def _still_route(key: bytes, value: str) -> bool:
    """Whether a published value still routes somewhere (not a tombstone of the platform's)."""
    text = unsign(key, value)
    return text is None or json.loads(text).get("status") != "deleted"


def gateway_url() -> str:
    """The gateway's base URL as clients use it (ends in /v1)."""
    return current_app.config["GATEWAY_URL"] or (
        f"http://{current_app.config['ADVERTISE_HOST']}:{current_app.config['GATEWAY_PORT']}/v1"
    )
