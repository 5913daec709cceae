"""Deploy, stop, restart and reconcile application servers: the real processes behind endpoints.

A deploy runs as an RQ job on any worker; the server it starts runs on that worker's host, recorded
on the application, so the stop and the reconcile for it go to that host's queue. Each step reports
to the application's log (a Redis Stream, see runtime/logs.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import redis
from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .. import ROOT, queues, secrets_box
from ..extensions import db
from ..models import ApiKey, Application, utcnow
from ..runtime import keys as runtime_keys
from ..runtime import logs
from . import ServiceError, lifecycle, registry

PHASES = ("queued", "starting process", "loading model", "warming up", "ready")
HEALTH_PHASES = {"loading": "loading model", "warming_up": "warming up", "ready": "ready"}
# The platform's own secrets never reach a serving process's environment.
PLATFORM_SECRETS = {"SECRET_KEY", "LLMAPP_SECRETS_KEY", "DATABASE_URL", "LLMAPP_ADMIN_PASSWORD", "REDIS_URL"}
RESTART_POLICIES = ("on-failure", "never")
LOCK_TTL_S = 5  # a deploy job renews its lock while it waits; a lock that lapses means the job died


class DeployFailed(Exception):
    """Why a deploy failed, in words for the user."""


def log_event(application_id, message: str, level: str = "INFO") -> None:
    logs.append(queues.connection(), application_id, message, level, source="platform")


# --- phases -------------------------------------------------------------------------------------


def _now_iso() -> str:
    return utcnow().isoformat(timespec="milliseconds")


def _advance(phases: list, name: str, status: str = "running") -> list:
    """Close the current phase and open ``name`` (or just close it, when ``name`` is None)."""
    phases = [dict(p) for p in phases]
    now = _now_iso()
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
    """
    deploy_id = uuid.uuid4().hex
    values = {"deploy_id": deploy_id, "deploy_phases": _advance([], "queued"), "last_error": None, "endpoint": None}
    if restart_reason:
        values["restarts"] = [*application.restarts, {"at": _now_iso(), "reason": restart_reason}]
        lifecycle.transition(application.id, "restart", **values)
        log_event(
            application.id,
            f"restarting in {delay_s:g} s (restart {len(values['restarts'])}): {restart_reason}",
            "WARNING",
        )
    else:
        lifecycle.transition(application.id, "deploy", restarts=[], **values)
        log_event(application.id, "deploy requested")
    args = ("jobs.deploy.deploy_application", str(application.id), deploy_id)
    options = {"job_id": f"deploy-{deploy_id}", "job_timeout": int(current_app.config["DEPLOY_TIMEOUT_S"]) + 120}
    try:
        queue = queues.queue()
        if delay_s:
            queue.enqueue_in(timedelta(seconds=delay_s), *args, **options)
        else:
            queue.enqueue(*args, **options)
    except redis.RedisError as e:
        lifecycle.transition(application.id, "deploy_failed", last_error="The job queue (Redis) is unreachable.")
        raise ServiceError("The deploy could not be queued: Redis is unreachable. Try again shortly.") from e
    return deploy_id


def _lock(name: str, application_id) -> str:
    return f"llmapp:{name}-lock:{application_id}"


def _spec(application: Application, port: int) -> dict:
    model = registry.get_model(application.model_id)
    config = current_app.config
    return {
        "app_id": str(application.id),
        "app_name": application.name,
        "deploy_id": application.deploy_id,
        "engine": model.engine,
        "model_name": model.name,
        "model_path": model.source,
        "precision": model.precision,
        "base_url": model.base_url,
        "upstream_model": model.upstream_model,
        "api_key_env": model.api_key_env,
        "config": application.config,
        "redis_url": config["REDIS_URL"],
        "host": config["ADVERTISE_HOST"],
        "bind": config["BIND_HOST"],
        "port": port,
        "grace_s": config["STOP_GRACE_S"],
        "secret_names": [var.name for var in application.env_vars if var.is_secret],
    }


def _environment(application: Application) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PLATFORM_SECRETS}
    for var in application.env_vars:
        try:
            env[var.name] = secrets_box.decrypt(var.value) if var.is_secret else var.value
        except ValueError as e:
            raise DeployFailed(f"The secret {var.name} could not be decrypted ({e}); enter it again.") from e
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_dir() -> Path:
    path = Path(current_app.instance_path) / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spawn(application: Application) -> psutil.Process:
    from ..embedded import free_port

    port = free_port()
    spec = _spec(application, port)
    spec_path = run_dir() / f"{application.id}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    with open(run_dir() / f"{application.id}.log", "ab") as output:
        # A session of its own: the server outlives this job, its worker, and a Ctrl-C of the worker.
        process = subprocess.Popen(
            [sys.executable, "-m", "llmapp.runtime", "--spec", str(spec_path)],
            cwd=ROOT,
            env=_environment(application),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    db.session.execute(
        db.update(Application)
        .where(Application.id == application.id)
        .values(process_host=queues.this_host(), process_pid=process.pid, process_port=port)
    )
    db.session.commit()
    db.session.refresh(application)
    log_event(application.id, f"server process {process.pid} started on {queues.this_host()}:{port}")
    return psutil.Process(process.pid)


def server_process(application: Application) -> psutil.Process | None:
    """The application's server process, if it runs on this host and is alive."""
    if not application.process_pid or application.process_host != queues.this_host():
        return None
    try:
        process = psutil.Process(application.process_pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            process.wait(0)
            return None
        if f"{application.id}.json" not in " ".join(process.cmdline()):  # not a reused pid
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.TimeoutExpired):
        return None


def health(application: Application, timeout: float = 2.0) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{application.process_port}/health", timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        return None


def endpoint_url(application: Application) -> str:
    return f"http://{current_app.config['ADVERTISE_HOST']}:{application.process_port}/v1"


def _last_error_line(application: Application) -> str:
    for line in reversed(logs.tail(queues.connection(), application.id, 20)):
        if line.get("level") in ("ERROR", "CRITICAL") and line.get("source") == "server":
            return line["message"]
    return ""


def _wait_ready(application: Application, process: psutil.Process, lock: str) -> None:
    deadline = time.monotonic() + current_app.config["DEPLOY_TIMEOUT_S"]
    connection = queues.connection()
    current = application.deploy_phases[-1]["name"]
    while time.monotonic() < deadline:
        connection.expire(lock, LOCK_TTL_S)  # a heartbeat: the reconcile repairs a deploy whose job died
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
            if phase and phase != current:
                for name in PHASES[PHASES.index(current) + 1 : PHASES.index(phase) + 1]:
                    _set_phase(application, name)
                current = phase
            if current == "ready":
                return
        time.sleep(0.05)
    raise DeployFailed(
        f"The server was not ready within {current_app.config['DEPLOY_TIMEOUT_S']:g} s (it was {current})."
    )


def run_deploy(application_id, deploy_id: str) -> str:
    """The deploy job's work: start the server, wait until it is ready, record running (or failed).

    Idempotent: a second run for the same deploy finds the lock or the process and starts nothing.
    """
    connection = queues.connection()
    lock = _lock("deploy", application_id)
    if not connection.set(lock, deploy_id, nx=True, ex=LOCK_TTL_S):
        return "another job is deploying this application"
    try:
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.status != lifecycle.DEPLOYING or application.deploy_id != deploy_id:
            return "stale deploy: nothing to do"
        log_event(application.id, "deploy job started")
        try:
            process = server_process(application)  # a previous run of this job already started it
            if process is None:
                _set_phase(application, "starting process")
                process = _spawn(application)
            _wait_ready(application, process, lock)
        except DeployFailed as e:
            _fail_deploy(application, str(e))
            return f"failed: {e}"
        _set_phase(application, None)
        lifecycle.transition(application.id, "deployed", endpoint=endpoint_url(application), deployed_at=utcnow())
        publish_keys(application)
        log_event(application.id, f"running at {endpoint_url(application)}")
        return "running"
    finally:
        if connection.get(lock) == deploy_id.encode():
            connection.delete(lock)


def _fail_deploy(application: Application, reason: str) -> None:
    terminate(application, grace_s=0)
    _set_phase(application, None, "failed")
    lifecycle.transition(
        application.id,
        "deploy_failed",
        last_error=reason,
        endpoint=None,
        process_pid=None,
        process_port=None,
        process_host=None,
    )
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


def terminate(application: Application, grace_s: float) -> int | None:
    """SIGTERM (the server drains in-flight requests), SIGKILL after ``grace_s``. Returns the exit code."""
    process = server_process(application)
    if process is None:
        return None
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(grace_s + 2)
        except psutil.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            log_event(application.id, f"server did not stop within {grace_s:g} s: killed", "WARNING")
            return process.wait(5)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None


def run_stop(application_id) -> str:
    connection = queues.connection()
    lock = _lock("stop", application_id)
    if not connection.set(lock, "1", nx=True, ex=int(current_app.config["STOP_GRACE_S"]) + 30):
        return "another job is stopping this application"
    try:
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.status != lifecycle.STOPPING:
            return "not stopping: nothing to do"
        code = terminate(application, current_app.config["STOP_GRACE_S"])
        _stopped(application, f"stopped (exit code {code})" if code is not None else "stopped")
        return "stopped"
    finally:
        connection.delete(lock)


def _stopped(application: Application, message: str) -> None:
    lifecycle.transition(
        application.id, "stopped", endpoint=None, process_pid=None, process_port=None, process_host=None
    )
    queues.connection().delete(f"llmapp:servers:{application.id}")
    log_event(application.id, message)


def cleanup(application_id, pid: int | None, host: str | None) -> None:
    """After a delete: no process left behind, no keys or logs kept in Redis."""
    if pid:
        queue = queues.host_queue_name(host) if host else queues.DEFAULT_QUEUE
        if host == queues.this_host():
            kill_orphan(pid, str(application_id))
        else:
            queues.queue(queue).enqueue("jobs.deploy.kill_process", pid, str(application_id))
    connection = queues.connection()
    connection.delete(
        logs.stream_key(application_id),
        runtime_keys.keys_key(application_id),
        runtime_keys.used_key(application_id),
        f"llmapp:servers:{application_id}",
    )


def shutdown_host(reason: str) -> int:
    """Stop every server on this host and record it (the embedded platform's Ctrl-C). Returns how many."""
    host = queues.this_host()
    stopped = 0
    for application in db.session.scalars(db.select(Application).where(Application.process_host == host)).all():
        try:
            if application.status == lifecycle.DEPLOYING:
                _fail_deploy(application, f"The deploy was interrupted: {reason}.")
            else:
                if application.status == lifecycle.RUNNING:
                    lifecycle.transition(application.id, "stop")
                terminate(application, current_app.config["STOP_GRACE_S"])
                _stopped(application, f"stopped: {reason}")
        except lifecycle.TransitionRefused:
            continue  # a worker's job or reconcile finished it meanwhile
        stopped += 1
    return stopped


def kill_orphan(pid: int, application_id: str) -> None:
    try:
        process = psutil.Process(pid)
        if f"{application_id}.json" in " ".join(process.cmdline()):
            os.killpg(pid, signal.SIGKILL)
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass


# --- API keys -----------------------------------------------------------------------------------


def publish_keys(application: Application) -> None:
    """Give the running server the application's active keys (it reads them from Redis per request)."""
    active = db.session.execute(
        db.select(ApiKey.key_hash, ApiKey.id).where(
            ApiKey.application_id == application.id, ApiKey.revoked_at.is_(None)
        )
    ).all()
    runtime_keys.publish(queues.connection(), application.id, {key_hash: key_id for key_hash, key_id in active})


# --- reconcile ----------------------------------------------------------------------------------


def _job_pending(job_id: str) -> bool:
    try:
        return Job.fetch(job_id, connection=queues.connection()).get_status() in ("queued", "scheduled", "deferred")
    except NoSuchJobError:
        return False


def reconcile(host: str) -> dict:
    """Compare the database with the processes on ``host`` and repair the difference."""
    summary = {"checked": 0, "restarted": 0, "failed": 0, "repaired": 0}
    connection = queues.connection()
    candidates = db.session.scalars(
        db.select(Application).where(
            db.or_(
                Application.process_host == host,
                db.and_(Application.process_host.is_(None), Application.status == lifecycle.DEPLOYING),
            ),
            Application.status.in_((lifecycle.RUNNING, lifecycle.DEPLOYING, lifecycle.STOPPING)),
        )
    ).all()
    for application in candidates:
        summary["checked"] += 1
        if application.status == lifecycle.RUNNING:
            summary[_reconcile_running(application, connection)] += 1
        elif application.status == lifecycle.DEPLOYING:
            if not connection.exists(_lock("deploy", application.id)) and not _job_pending(
                f"deploy-{application.deploy_id}"
            ):
                _repair_deploy(application)
                summary["repaired"] += 1
        elif not connection.exists(_lock("stop", application.id)) and not _job_pending(f"stop-{application.deploy_id}"):
            terminate(application, grace_s=0)
            _stopped(application, "stopped (repaired: its stop job had died)")
            summary["repaired"] += 1
    return summary


def _reconcile_running(application: Application, connection) -> str:
    process = server_process(application)
    state = health(application) if process else None
    misses_key = f"llmapp:health-misses:{application.id}"
    if process and state and state.get("status") == "ready":
        connection.delete(misses_key)
        _sample_usage(application, process)
        return "checked"
    if process and connection.incr(misses_key) < 3:  # alive but silent: allow for a busy moment
        connection.expire(misses_key, 120)
        return "checked"
    connection.delete(misses_key)
    reason = "the server stopped answering its health checks" if process else "the server process died"
    terminate(application, grace_s=0)
    policy = application.config.get("restart_policy", "on-failure")
    limit = int(application.config.get("max_restarts", 3))
    used = len(application.restarts or [])
    if policy == "on-failure" and used < limit:
        request_deploy(application, restart_reason=reason, delay_s=2**used)
        return "restarted"
    detail = f"{reason[0].upper()}{reason[1:]}" + (
        f" after {used} restart{'s' if used != 1 else ''}." if policy == "on-failure" else " (restart policy: never)."
    )
    lifecycle.transition(
        application.id,
        "crashed",
        last_error=detail,
        endpoint=None,
        process_pid=None,
        process_port=None,
        process_host=None,
    )
    log_event(application.id, detail, "ERROR")
    return "failed"


def _repair_deploy(application: Application) -> None:
    """The deploy job died (its worker was killed): finish it if the server is fine, else fail it."""
    process = server_process(application)
    state = health(application) if process else None
    if state and state.get("status") == "ready":
        _set_phase(application, None)
        lifecycle.transition(application.id, "deployed", endpoint=endpoint_url(application), deployed_at=utcnow())
        publish_keys(application)
        log_event(application.id, "deploy completed by the reconcile (its job had died)", "WARNING")
    else:
        _fail_deploy(application, "The deploy job stopped before finishing (its worker died). Deploy again.")


def _sample_usage(application: Application, process: psutil.Process) -> None:
    try:
        with process.oneshot():
            usage = {
                "cpu_percent": process.cpu_percent(interval=0.1),
                "rss_bytes": process.memory_info().rss,
                "threads": process.num_threads(),
                "sampled_at": _now_iso(),
            }
    except psutil.NoSuchProcess:
        return
    used = queues.connection().hgetall(runtime_keys.used_key(application.id))
    for key_id, ts in used.items():
        db.session.execute(
            db.update(ApiKey)
            .where(ApiKey.id == int(key_id), ApiKey.application_id == application.id)
            .values(last_used_at=datetime.fromtimestamp(float(ts), UTC).replace(tzinfo=None))
        )
    db.session.execute(db.update(Application).where(Application.id == application.id).values(resource_usage=usage))
    db.session.commit()
