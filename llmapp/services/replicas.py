"""An application's replicas as the platform keeps them: where one is reached, taking replicas away
(their servers terminated on this host, or by their host's worker; their rows gone, the route
following), and what a deleted application leaves. Starting them is the deploy's (deployments.py);
following them, the reconcile's (reconcile.py).
"""

import time
import uuid

import redis
import sqlalchemy as sa
from flask import current_app

from .. import keyspace, queues, secrets_box
from ..extensions import db
from ..models import Application, Replica, utcnow
from ..runtime import keys as runtime_keys
from . import metrics, routing
from .server_processes import kill_orphan, terminate

# Between a roll-out publishing its old replicas as draining and signalling them: every gateway applies
# a route within moments (it is announced), after which none sends them anything new.
ROUTE_SETTLE_S = 1.0
RETIRE_LOCK_TTL_S = 5  # held (renewed) while a retirement runs: the reconcile leaves draining replicas to it


def endpoint_url(replica: Replica) -> str:
    """Where clients reach one replica directly (the gateway is the application's one address)."""
    return f"http://{replica.address}:{replica.port}/v1"


def retire_job_id(deploy_id: str, host: str) -> str:
    return f"retire-{deploy_id}-{host}"


def retire(application: Application, deploy_id: str, replicas: list[Replica]) -> None:
    """Have draining replicas stopped by their hosts' workers, in a job of their own: the roll-out
    ``deploy_id`` that drained them ends now (its application may be deployed again at once). Redis
    unreachable: the reconcile stops them (draining replicas with no retirement on its way)."""
    for host in {r.host for r in replicas}:
        try:
            queues.queue(queues.host_queue_name(host)).enqueue(
                "jobs.deploy.retire_replicas",
                str(application.id),
                [r.id for r in replicas if r.host == host],
                job_id=retire_job_id(deploy_id, host),
                job_timeout=int(current_app.config["STOP_GRACE_S"]) + 60,
            )
        except redis.RedisError as e:
            current_app.logger.warning("draining replicas of %s wait for the reconcile: %s", application.id, e)


def run_retire(application_id, replica_ids: list[str]) -> str:
    """Once every gateway sends them nothing, stop draining replicas of this host, with the stop's grace
    for what they have in flight."""
    connection = queues.connection()
    with queues.held_lock(connection, keyspace.lock("retire", application_id), RETIRE_LOCK_TTL_S) as held:
        time.sleep(ROUTE_SETTLE_S)
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None:
            return "gone"
        mine = [r for r in application.replicas if r.id in replica_ids and r.host == queues.this_host()]
        remove(application, mine, current_app.config["STOP_GRACE_S"])
        return f"retired {len(mine)}" + ("" if held else " (beside another retirement)")


def remove(application: Application, replicas: list[Replica], grace_s: float) -> None:
    """Terminate replicas' servers (this host's here, with ``grace_s``; another host's by its worker)
    and forget them; the route follows. A replica someone else removed meanwhile is skipped."""
    ids = [identity[0] for identity in (sa.inspect(r).identity for r in replicas) if identity]  # unloaded: maybe gone
    application_id = sa.inspect(application).identity[0]
    if not ids:
        return
    recorded = db.session.scalars(db.select(Replica).where(Replica.id.in_(ids))).all()
    here = queues.this_host()
    terminate([r for r in recorded if r.host == here], grace_s)
    for replica in recorded:
        if replica.host != here and replica.pid:
            try:
                kill_elsewhere(application_id, replica.pid, replica.host)
            except redis.RedisError:
                current_app.logger.error(
                    "replica %s on %s (pid %s) was not stopped: Redis is unreachable; stop it by hand",
                    replica.id, replica.host, replica.pid,
                )  # fmt: skip
    db.session.execute(db.delete(Replica).where(Replica.id.in_(ids)))
    # The route's version: it changes with the replicas.
    db.session.execute(db.update(Application).where(Application.id == application_id).values(updated_at=utcnow()))
    db.session.commit()
    routing.publish(application_id)


def kill_elsewhere(application_id, pid: int, host: str) -> None:
    queues.queue(queues.host_queue_name(host)).enqueue("jobs.deploy.kill_process", pid, str(application_id))


def cleanup(application_id, processes: list[tuple[int, str]]) -> None:
    """After a delete: no process left behind (``processes``: its replicas' pids and hosts), no keys
    or logs kept in Redis."""
    try:
        for pid, host in processes:
            if host == queues.this_host():
                kill_orphan(pid, str(application_id))
            else:
                kill_elsewhere(application_id, pid, host)
        runtime_keys.publish(  # the gateway's index too
            queues.connection(),
            application_id,
            {},
            application_key=secrets_box.application_key(application_id),
            route_key=routing.signing_key(),
        )
        queues.connection().delete(*keyspace.application_keys(application_id))
        metrics.delete_series(application_id)
        queues.delete_matching(queues.connection(), keyspace.playground_pattern(application_id))
    except redis.RedisError as e:  # the application is gone; what it left in Redis holds no secret
        current_app.logger.warning("after deleting application %s, Redis was unreachable: %s", application_id, e)
