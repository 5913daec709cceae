"""Stopping an application: its servers drain (requests in flight finish within the grace) and exit,
on the host that runs them; the embedded platform's Ctrl-C stops its host's. The stop job, the
reconcile (a stop whose job died) and app.py call these.
"""

import uuid

import redis
from flask import current_app
from flask_babel import gettext as _

from .. import keyspace, queues
from ..extensions import db
from ..models import Application, Replica
from . import ServiceError, lifecycle, replicas
from .deployments import LOCK_TTL_S, fail_deploy
from .platform_log import log_event
from .server_processes import terminate


def request_stop(application: Application) -> None:
    """Move to stopping and send the stop job to the host that runs the servers.

    :raise TransitionRefused: it is not running.
    """
    lifecycle.transition(application.id, "stop")
    host = application.replicas[0].host if application.replicas else queues.this_host()
    try:
        log_event(application.id, "stop requested")
        queues.queue(queues.host_queue_name(host)).enqueue(
            "jobs.deploy.stop_application",
            str(application.id),
            job_id=f"stop-{application.deploy_id}",
            job_timeout=int(current_app.config["STOP_GRACE_S"]) + 60,
        )
    except redis.RedisError as e:  # the reconcile finishes the stop once Redis is back
        raise ServiceError(
            _("Stopping, but the stop job could not be queued (Redis is unreachable); it completes when Redis is back.")
        ) from e


def run_stop(application_id) -> str:
    connection = queues.connection()
    with queues.held_lock(connection, keyspace.lock("stop", application_id), LOCK_TTL_S) as held:
        if not held:
            return "another job is stopping this application"
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.status != lifecycle.STOPPING:
            return "not stopping: nothing to do"
        codes = [c for c in terminate(list(application.replicas), current_app.config["STOP_GRACE_S"]).values()]
        code = next((c for c in codes if c is not None), None)
        stopped(application, f"stopped (exit code {code})" if code is not None else "stopped")
        return "stopped"


def stopped(application: Application, message: str) -> None:
    """Record a stop that is done: the processes gone, their replicas forgotten (a server still alive
    on another host is killed by its host's worker)."""
    elsewhere = [(r.pid, r.host) for r in application.replicas if r.pid and r.host != queues.this_host()]
    application.replicas.clear()
    # Commits the replicas' removal too.
    lifecycle.transition(application.id, "stopped", rolling_to=None, canary_release=None, canary_percent=0)
    for pid, host in elsewhere:
        replicas.kill_elsewhere(application.id, pid, host)
    try:
        queues.connection().delete(keyspace.server(application.id))
    except redis.RedisError:
        pass  # it expires by itself
    log_event(application.id, message)


def shutdown_host(reason: str) -> int:
    """Stop every server on this host and record it (the embedded platform's Ctrl-C). Returns how many."""
    host = queues.this_host()
    count = 0
    on_host = db.select(Replica.application_id).where(Replica.host == host)
    for application in db.session.scalars(db.select(Application).where(Application.id.in_(on_host))).all():
        try:
            if application.status == lifecycle.DEPLOYING:
                fail_deploy(application, f"The deploy was interrupted: {reason}.")
            else:
                if application.status == lifecycle.RUNNING:
                    lifecycle.transition(application.id, "stop")
                terminate(list(application.replicas), current_app.config["STOP_GRACE_S"])
                stopped(application, f"stopped: {reason}")
        except lifecycle.TransitionRefused:
            continue  # a worker's job or reconcile finished it meanwhile
        count += 1
    return count
