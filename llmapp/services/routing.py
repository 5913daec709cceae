"""The gateway's routes: what the platform tells every gateway about each application, in Redis.

A route (llmapp/gateway/table.py reads it) is derived from the application's row and its replicas'
rows: its name, owner, status, running release and each replica's address, release and state, so it is
published after every change of those is committed (a transition, a replica ready or draining, an
edit, a delete) and announced on ``keyspace.routes_changed()``. It is signed (app servers
can write to Redis; they can't sign) and carries a version, the application row's ``updated_at``
(bumped with each replica's change): a publisher that read the rows earlier never overwrites a newer
route. When Redis is unreachable at that moment the
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
from ..models import Application, Replica
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
    Application.id, Application.name, Application.created_by_id, Application.status,
    Application.deployed_release, Application.canary_release, Application.canary_percent, Application.updated_at,
)  # fmt: skip
ROUTED = ("ready", "draining")  # a starting replica is sent nothing: it is not in the route yet


def signing_key() -> bytes:
    """The key the gateways check routes and key routes with (they derive it from the same secret)."""
    return route_key(current_app.config.get("SECRETS_KEY") or current_app.config["SECRET_KEY"])


def _replicas_by_application(application_id=None) -> dict:
    """The routed replicas of one application (or of all), by application id."""
    found: dict = {}
    query = (
        db.select(Replica.application_id, Replica.id, Replica.port, Replica.address, Replica.release, Replica.status)
        .where(Replica.status.in_(ROUTED), Replica.port.is_not(None))
        .order_by(Replica.started_at)
    )
    if application_id is not None:
        query = query.where(Replica.application_id == application_id)
    rows = db.session.execute(query)
    for row in rows:
        found.setdefault(row.application_id, []).append(row)
    return found


def route(application, replica_rows=()) -> dict:
    """The application's route as the gateways read it (``application``: its row, or ROUTE_COLUMNS;
    ``replica_rows``: its replicas that are ready or draining)."""
    replicas = []
    if application.status in (lifecycle.RUNNING, lifecycle.STOPPING):
        for replica in replica_rows:
            replicas.append(
                {
                    "id": replica.id,
                    "url": f"http://{replica.address}:{replica.port}",
                    "release": replica.release,
                    # A draining or stopping server finishes what it has; the gateway sends it nothing new.
                    "draining": replica.status == "draining" or application.status == lifecycle.STOPPING,
                }
            )
    weights = {}
    canary = application.canary_release is not None and application.deployed_release is not None
    if canary and application.status == lifecycle.RUNNING:
        # The gateway splits requests between the two releases (replicas of others get none).
        share = application.canary_percent
        weights = {str(application.deployed_release): 100 - share, str(application.canary_release): share}
    return {
        "id": str(application.id),
        "name": application.name,
        "weights": weights,
        "owner_id": application.created_by_id,
        "status": application.status,
        "release": application.deployed_release,
        "version": application.updated_at.replace(tzinfo=UTC).timestamp() if application.updated_at else 0,
        "replicas": replicas,
    }


def _signed(application, replica_rows, key: bytes) -> str:
    return sign(key, json.dumps(route(application, replica_rows), sort_keys=True))


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
        if application is None:
            signed = _tombstone(str(application_id), key)
        else:
            signed = _signed(application, _replicas_by_application(application.id).get(application.id, ()), key)
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
    applications = db.session.execute(db.select(*ROUTE_COLUMNS)).all()
    replicas = _replicas_by_application()
    wanted = {str(a.id): _signed(a, replicas.get(a.id, ()), key) for a in applications}
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
