"""The reconcile: every few seconds, per host, compare what the database wants with the server
processes that run, and repair the difference (a dead or silent server restarted or failed, a
deploy whose job died followed or failed, a stop whose job died finished). Its decisions are pure
rules in supervision.py.
"""

import time
from datetime import UTC, datetime

import psutil
from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .. import keyspace, queues
from ..extensions import db
from ..models import ApiKey, Application
from . import applications, lifecycle, metrics, plugins, routing
from .deployments import fail_deploy, now_iso, publish_keys, request_deploy, stopped
from .platform_log import log_event
from .server_processes import health, server_process, terminate
from .supervision import BUSY_LIMIT_S, Silence, decide_restart, job_in_hand, judge_silence, key_uses

RECONCILE_LOCK_TTL_S = 30


def _job_in_hand(job_id: str) -> bool:
    """Whether the job ``job_id`` is on its way (supervision.job_in_hand)."""
    try:
        job = Job.fetch(job_id, connection=queues.connection(), serializer=queues.SERIALIZER)
    except NoSuchJobError:
        return False
    started = job.started_at
    started_s_ago = None if started is None else (datetime.now(UTC) - started.replace(tzinfo=UTC)).total_seconds()
    return job_in_hand(job.get_status(), started_s_ago, bool(job.meta.get(queues.TOOK_LOCK)))


def reconcile(host: str) -> dict:
    """Compare the database with the processes on ``host`` and repair the difference.

    One reconcile per host at a time, however long it waits on a process: the others skip.
    """
    connection = queues.connection()
    connection.delete(keyspace.reconcile_queued(host))  # the scheduler may queue the next one
    with queues.held_lock(connection, keyspace.reconcile_lock(host), RECONCILE_LOCK_TTL_S) as held:
        if not held:
            return {"skipped": "another reconcile of this host is running"}
        return _reconcile(host, connection)


def _reconcile(host: str, connection) -> dict:
    summary = {"checked": 0, "restarted": 0, "failed": 0, "repaired": 0, "resumed": 0}
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
        try:
            if application.status == lifecycle.RUNNING:
                summary[_reconcile_running(application, connection)] += 1
            elif application.status == lifecycle.DEPLOYING:
                summary[_reconcile_deploying(application, connection)] += 1
            elif not connection.exists(keyspace.lock("stop", application.id)) and not _job_in_hand(
                f"stop-{application.deploy_id}"
            ):
                # Its requests in flight still get the grace the stop promised them.
                terminate(application, current_app.config["STOP_GRACE_S"])
                stopped(application, "stopped (repaired: its stop job had died)")
                summary["repaired"] += 1
        except lifecycle.TransitionRefused:
            continue  # a job moved it meanwhile: the next reconcile sees where it is
    summary["routes"] = routing.publish_all()  # a route Redis missed or lost, as the rows say
    return summary


def _reconcile_deploying(application: Application, connection) -> str:
    """A deploy whose job died: follow its server if one is alive (a job of this host's), else fail it."""
    deploy_id = application.deploy_id
    if connection.exists(keyspace.lock("deploy", application.id)) or any(
        _job_in_hand(f"{kind}-{deploy_id}") for kind in ("deploy", "resume")
    ):
        return "checked"
    if server_process(application) is None:
        fail_deploy(application, "The deploy job stopped before finishing (its worker died). Deploy again.")
        return "repaired"
    log_event(application.id, "the deploy job died while the server was starting: following it to ready", "WARNING")
    queues.queue(queues.host_queue_name(queues.this_host())).enqueue(
        "jobs.deploy.resume_deploy",
        str(application.id),
        deploy_id,
        job_id=f"resume-{deploy_id}",
        job_timeout=int(current_app.config["DEPLOY_TIMEOUT_S"]) + 120,
    )
    return "resumed"


def _reconcile_running(application: Application, connection) -> str:
    process = server_process(application)
    if process is None:
        return _restart_or_fail(application, "the server process died")
    silence_key = keyspace.health_misses(application.id)
    state = health(application)
    if state and state.get("status") == "ready":
        connection.delete(silence_key)
        _sample_usage(application, process)
        if not connection.exists(keyspace.api_keys(application.id)):
            publish_keys(application)  # Redis lost its data (a restart without persistence)
        if not connection.exists(keyspace.plugin_chain(application.id)):
            plugins.publish_chain(application)
        return "checked"
    try:
        cpu = sum(process.cpu_times()[:2])
    except psutil.NoSuchProcess:
        return _restart_or_fail(application, "the server process died")
    previous = Silence.load(connection.hgetall(silence_key))
    silence, reason = judge_silence(previous, cpu, time.time())
    if reason is None:
        if silence.busy_since is not None and previous.busy_since is None:
            log_event(application.id, "the server is too busy to answer its health check; not restarting it", "WARNING")
        connection.hset(silence_key, mapping=silence.dump())
        connection.expire(silence_key, BUSY_LIMIT_S * 2)
        return "checked"
    connection.delete(silence_key)
    return _restart_or_fail(application, reason)


def _restart_or_fail(application: Application, reason: str) -> str:
    terminate(application, grace_s=0)
    config = {**applications.DEFAULT_CONFIG, **application.config}
    decision = decide_restart(
        reason, config["restart_policy"], int(config["max_restarts"]), len(application.restarts or [])
    )
    if decision.restart:
        request_deploy(application, restart_reason=reason, delay_s=decision.delay_s)
        return "restarted"
    lifecycle.transition(
        application.id,
        "crashed",
        last_error=decision.error,
        process_pid=None,
        process_port=None,
        process_host=None,
    )
    log_event(application.id, decision.error, "ERROR")
    return "failed"


def _sample_usage(application: Application, process: psutil.Process) -> None:
    try:
        # Not inside oneshot(): it caches the CPU times, and the two readings would be the same (0 %).
        cpu_percent = process.cpu_percent(interval=0.1)
        with process.oneshot():
            usage = {
                "cpu_percent": cpu_percent,
                "rss_bytes": process.memory_info().rss,
                "threads": process.num_threads(),
                "sampled_at": now_iso(),
            }
    except psutil.NoSuchProcess:
        return
    used = key_uses(queues.connection().hgetall(keyspace.api_keys_used(application.id)))
    for key_id, last_used_at in used.items():
        db.session.execute(
            db.update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.application_id == application.id)
            .values(last_used_at=last_used_at)
        )
    db.session.execute(db.update(Application).where(Application.id == application.id).values(resource_usage=usage))
    db.session.commit()
    metrics.record_usage(application.id, usage["cpu_percent"], usage["rss_bytes"])
