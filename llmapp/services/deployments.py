"""Deploy and stop: the lifecycle's transitions as jobs (the real processes behind endpoints).

A deploy runs as an RQ job on any worker; the server it starts (server_processes.py) runs on that
worker's host, recorded on the application, so the stop and the reconcile (reconcile.py) for it go to
that host's queue. Each step reports to the application's log (platform_log.py).
"""

import time
import uuid
from datetime import UTC, datetime, timedelta

import psutil
import redis
from flask import current_app

from .. import keyspace, queues, secrets_box
from ..extensions import db
from ..models import ApiKey, Application, utcnow
from ..runtime import keys as runtime_keys
from ..runtime import logs
from . import ServiceError, lifecycle, metrics, releases, routing
from .platform_log import log_event
from .server_processes import DeployFailed, health, kill_orphan, server_process, spawn, terminate

PHASES = ("queued", "starting process", "loading model", "warming up", "ready")
HEALTH_PHASES = {"loading": "loading model", "warming_up": "warming up", "ready": "ready"}
LOCK_TTL_S = 5  # a deploy job's lock, renewed while it runs; a lock that lapses means the job died


def now_iso() -> str:
    """Now, for the phases and samples kept on the application (JSON)."""
    return utcnow().isoformat(timespec="milliseconds")


def _advance(phases: list, name: str, status: str = "running") -> list:
    """Close the current phase and open ``name`` (or just close it, when ``name`` is None)."""
    phases = [dict(p) for p in phases]
    now = now_iso()
    if phases and phases[-1].get("ended_at") is None:
        last = phases[-1]
        last["ended_at"] = now
        last["seconds"] = round((utcnow() - datetime.fromisoformat(last["started_at"])).total_seconds(), 3)
        last["status"] = "failed" if status == "failed" and not name else "done"
    if name:
        phases.append({"name": name, "started_at": now, "ended_at": None, "seconds": None, "status": status})
    return phases


def _set_phase(application: Application, name: str | None, status: str = "running") -> None:
    application.deploy_phases = _advance(application.deploy_phases or [], name, status)
    db.session.execute(
        db.update(Application)
        .where(Application.id == application.id, Application.deploy_id == application.deploy_id)
        .values(deploy_phases=application.deploy_phases)
    )
    db.session.commit()


# --- deploy -------------------------------------------------------------------------------------


def request_deploy(application: Application, *, restart_reason: str | None = None, delay_s: float = 0) -> str:
    """Move to deploying (one conditional UPDATE) and enqueue the deploy job; return the deploy id.

    :raise TransitionRefused: it is not stopped or failed (or running, for a restart).
    :raise ServiceError: Redis is unreachable (the application is left as it was).
    """
    application_id = application.id
    try:
        queues.connection().ping()  # before anything changes: no deploy half-done for want of Redis
    except redis.RedisError as e:
        raise ServiceError("The deploy could not be queued: Redis is unreachable. Nothing changed; try again.") from e
    deploy_id = uuid.uuid4().hex
    values = {"deploy_id": deploy_id, "deploy_phases": _advance([], "queued"), "last_error": None, "endpoint": None}
    if restart_reason:
        values["restarts"] = [*application.restarts, {"at": now_iso(), "reason": restart_reason}]
        lifecycle.transition(application_id, "restart", **values)
        log_event(
            application_id,
            f"restarting in {delay_s:g} s (restart {len(values['restarts'])}): {restart_reason}",
            "WARNING",
        )
    else:
        lifecycle.transition(application_id, "deploy", restarts=[], **values)
        log_event(application_id, "deploy requested")
    args = ("jobs.deploy.deploy_application", str(application_id), deploy_id)
    options = {"job_id": f"deploy-{deploy_id}", "job_timeout": int(current_app.config["DEPLOY_TIMEOUT_S"]) + 120}
    try:
        queue = queues.queue()
        if delay_s:
            queue.enqueue_in(timedelta(seconds=delay_s), *args, **options)
        else:
            queue.enqueue(*args, **options)
    except redis.RedisError as e:
        lifecycle.transition(application_id, "deploy_failed", last_error="The job queue (Redis) was unreachable.")
        raise ServiceError("The deploy could not be queued: Redis is unreachable. Try again shortly.") from e
    return deploy_id


def endpoint_url(application: Application) -> str:
    """Where clients call the application: the advertised host and its own port."""
    return f"http://{current_app.config['ADVERTISE_HOST']}:{application.port or application.process_port}/v1"


def _last_error_line(application: Application) -> str:
    for line in reversed(logs.tail(queues.connection(), application.id, 20)):
        if line.get("level") in ("ERROR", "CRITICAL") and line.get("source") == "server":
            return line["message"]
    return ""


def _deadline(application: Application) -> float:
    """When the deploy must be ready by (a monotonic time): the deploy timeout after its process started."""
    started = next((p["started_at"] for p in application.deploy_phases if p["name"] == "starting process"), None)
    elapsed = (utcnow() - datetime.fromisoformat(started)).total_seconds() if started else 0
    return time.monotonic() - elapsed + current_app.config["DEPLOY_TIMEOUT_S"]


def _wait_ready(application: Application, process: psutil.Process) -> None:
    """Follow the server's phases until it is ready, fails, exits or runs past the deploy deadline.

    :raise DeployFailed: with the reason.
    """
    deadline = _deadline(application)
    current = application.deploy_phases[-1]["name"] if application.deploy_phases else "starting process"
    while time.monotonic() < deadline:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            code = process.wait(0) if process.is_running() else None
            detail = _last_error_line(application)
            raise DeployFailed(
                f"The server process exited during start-up{f' (code {code})' if code else ''}"
                f"{': ' + detail if detail else ''}. See the logs."
            )
        state = health(application, timeout=1.0)
        if state:
            if state.get("status") == "failed":
                raise DeployFailed(
                    f"The model could not be loaded: {state.get('error') or _last_error_line(application)}"
                )
            phase = HEALTH_PHASES.get(state.get("status"))
            if phase and phase != current and current in PHASES:
                for name in PHASES[PHASES.index(current) + 1 : PHASES.index(phase) + 1]:
                    _set_phase(application, name)
                current = phase
            if current == "ready":
                return
        time.sleep(0.05)
    raise DeployFailed(
        f"The server was not ready within {current_app.config['DEPLOY_TIMEOUT_S']:g} s (it was {current})."
    )


def run_deploy(application_id, deploy_id: str, resumed: bool = False) -> str:
    """The deploy job's work: start the server, wait until it is ready, record running (or failed).

    Idempotent: a second run for the same deploy finds the lock or the process and starts nothing.
    ``resumed``: the reconcile found the deploy without its job, its server alive; follow it.
    """
    connection = queues.connection()
    with queues.held_lock(connection, keyspace.lock("deploy", application_id), LOCK_TTL_S) as held:
        if not held:
            return "another job is deploying this application"
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.status != lifecycle.DEPLOYING or application.deploy_id != deploy_id:
            return "stale deploy: nothing to do"
        log_event(application.id, "deploy resumed: following the server to ready" if resumed else "deploy job started")
        try:
            process = server_process(application)  # a previous run of this job already started it
            if process is None:
                if resumed:
                    raise DeployFailed("The deploy job stopped before finishing (its worker died). Deploy again.")
                _set_phase(application, "starting process")
                process = spawn(application)
            _wait_ready(application, process)
        except DeployFailed as e:
            fail_deploy(application, str(e))
            return f"failed: {e}"
        _set_phase(application, None)
        # Its keys before anyone sees it running: a key made once it runs is published by its maker, and
        # a publish of what this job read earlier must not come after that one and drop it.
        publish_keys(application)
        try:
            lifecycle.transition(
                application.id,
                "deployed",
                endpoint=endpoint_url(application),
                deployed_at=utcnow(),
                deployed_release=releases.record(application, None, releases.DEPLOYED_NOTE).number,
            )
        except lifecycle.TransitionRefused:
            return "finished meanwhile by another job"
        log_event(
            application.id,
            f"deploy completed by the reconcile (its job had died): running at {endpoint_url(application)}"
            if resumed
            else f"running at {endpoint_url(application)}",
        )
        return "running"


def fail_deploy(application: Application, reason: str) -> None:
    """Kill what the deploy started and record it failed, with the reason in words."""
    terminate(application, grace_s=0)
    _set_phase(application, None, "failed")
    try:
        lifecycle.transition(
            application.id,
            "deploy_failed",
            last_error=reason,
            process_pid=None,
            process_port=None,
            process_host=None,
        )
    except lifecycle.TransitionRefused:
        return  # another job or the reconcile settled it meanwhile
    log_event(application.id, f"deploy failed: {reason}", "ERROR")


# --- stop ---------------------------------------------------------------------------------------


def request_stop(application: Application) -> None:
    """Move to stopping and send the stop job to the host that runs the server.

    :raise TransitionRefused: it is not running.
    """
    lifecycle.transition(application.id, "stop")
    try:
        log_event(application.id, "stop requested")
        queues.queue(queues.host_queue_name(application.process_host or queues.this_host())).enqueue(
            "jobs.deploy.stop_application",
            str(application.id),
            job_id=f"stop-{application.deploy_id}",
            job_timeout=int(current_app.config["STOP_GRACE_S"]) + 60,
        )
    except redis.RedisError as e:  # the reconcile finishes the stop once Redis is back
        raise ServiceError(
            "Stopping, but the stop job could not be queued (Redis is unreachable); it completes when Redis is back."
        ) from e


def run_stop(application_id) -> str:
    connection = queues.connection()
    with queues.held_lock(connection, keyspace.lock("stop", application_id), LOCK_TTL_S) as held:
        if not held:
            return "another job is stopping this application"
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.status != lifecycle.STOPPING:
            return "not stopping: nothing to do"
        code = terminate(application, current_app.config["STOP_GRACE_S"])
        stopped(application, f"stopped (exit code {code})" if code is not None else "stopped")
        return "stopped"


def stopped(application: Application, message: str) -> None:
    """Record a stop that is done: the process gone, its address forgotten."""
    lifecycle.transition(application.id, "stopped", process_pid=None, process_port=None, process_host=None)
    try:
        queues.connection().delete(keyspace.server(application.id))
    except redis.RedisError:
        pass  # it expires by itself
    log_event(application.id, message)


def cleanup(application_id, pid: int | None, host: str | None) -> None:
    """After a delete: no process left behind, no keys or logs kept in Redis."""
    try:
        if pid:
            queue = queues.host_queue_name(host) if host else queues.DEFAULT_QUEUE
            if host == queues.this_host():
                kill_orphan(pid, str(application_id))
            else:
                queues.queue(queue).enqueue("jobs.deploy.kill_process", pid, str(application_id))
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


def shutdown_host(reason: str) -> int:
    """Stop every server on this host and record it (the embedded platform's Ctrl-C). Returns how many."""
    host = queues.this_host()
    count = 0
    for application in db.session.scalars(db.select(Application).where(Application.process_host == host)).all():
        try:
            if application.status == lifecycle.DEPLOYING:
                fail_deploy(application, f"The deploy was interrupted: {reason}.")
            else:
                if application.status == lifecycle.RUNNING:
                    lifecycle.transition(application.id, "stop")
                terminate(application, current_app.config["STOP_GRACE_S"])
                stopped(application, f"stopped: {reason}")
        except lifecycle.TransitionRefused:
            continue  # a worker's job or reconcile finished it meanwhile
        count += 1
    return count


def publish_everything() -> None:
    """Every application's keys and route, as the database holds them (at start-up and after an
    upgrade: what an older platform published lacked the gateway's signed entries)."""
    for application in db.session.scalars(db.select(Application)):
        publish_keys(application)
    routing.publish_all()


def publish_keys(application: Application) -> None:
    """Give the running server the application's active keys (it reads them from Redis per request)."""
    now = utcnow()
    active = db.session.execute(
        db.select(ApiKey.key_hash, ApiKey.id, ApiKey.label, ApiKey.expires_at).where(
            ApiKey.application_id == application.id,
            ApiKey.revoked_at.is_(None),
            db.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    ).all()
    runtime_keys.publish(
        queues.connection(),
        application.id,
        {
            key_hash: (key_id, label, expires_at.replace(tzinfo=UTC).timestamp() if expires_at else None)
            for key_hash, key_id, label, expires_at in active
        },
        application_key=secrets_box.application_key(application.id),
        route_key=routing.signing_key(),
    )
