"""The reconcile: every few seconds, per host, compare what the database wants with the replicas'
server processes that run there, and repair the difference: a dead or silent replica replaced (or,
the last one, its application restarted or failed, as its restart policy says), a replacement
followed to ready, a deploy whose job died followed or failed, a roll-out whose job died ended (the
old release serving on), a stop or a drain whose job died finished. Its decisions are pure rules in
supervision.py.
"""

import time
import uuid
from datetime import UTC, datetime

import psutil
from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .. import keyspace, queues
from ..extensions import db
from ..models import ApiKey, Application, Replica, utcnow
from . import applications, lifecycle, metrics, plugins, routing
from .api_keys import publish_keys
from .deployments import end_roll_failed, fail_deploy, now_iso, request_deploy
from .platform_log import log_event
from .releases import get as get_release
from .replicas import endpoint_url, retire_job_id
from .replicas import remove as remove_replicas
from .server_processes import DeployFailed, health, server_process, spawn, terminate
from .server_spec import ServingSetup
from .stops import stopped
from .supervision import BUSY_LIMIT_S, Silence, decide_restart, job_in_hand, judge_silence, key_uses

RECONCILE_LOCK_TTL_S = 30
ENQUEUE_GRACE_S = 30  # between a deploy's request recording it and its job being queued (a busy web process)


def _job_in_hand(job_id: str) -> bool | None:
    """Whether the job ``job_id`` is on its way (supervision.job_in_hand); None: there is no such job."""
    try:
        job = Job.fetch(job_id, connection=queues.connection(), serializer=queues.SERIALIZER)
    except NoSuchJobError:
        return None
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
    summary = {"checked": 0, "restarted": 0, "failed": 0, "repaired": 0, "resumed": 0, "replaced": 0}
    on_host = db.select(Replica.application_id).where(Replica.host == host)
    candidates = db.session.scalars(
        db.select(Application).where(
            db.or_(
                Application.id.in_(on_host),
                db.and_(~Application.replicas.any(), Application.status == lifecycle.DEPLOYING),
            ),
            Application.status.in_((lifecycle.RUNNING, lifecycle.DEPLOYING, lifecycle.STOPPING)),
        )
    ).all()
    for application in candidates:
        summary["checked"] += 1
        try:
            if application.status == lifecycle.RUNNING:
                summary[_reconcile_running(application, connection, host)] += 1
            elif application.status == lifecycle.DEPLOYING:
                summary[_reconcile_deploying(application, connection, host)] += 1
            elif not connection.exists(keyspace.lock("stop", application.id)) and not _job_in_hand(
                f"stop-{application.deploy_id}"
            ):
                # Its requests in flight still get the grace the stop promised them.
                terminate(_on(application, host), current_app.config["STOP_GRACE_S"])
                stopped(application, "stopped (repaired: its stop job had died)")
                summary["repaired"] += 1
        except lifecycle.TransitionRefused:
            continue  # a job moved it meanwhile: the next reconcile sees where it is
    summary["routes"] = routing.publish_all()  # a route Redis missed or lost, as the rows say
    return summary


def _on(application: Application, host: str) -> list[Replica]:
    return [r for r in application.replicas if r.host == host]


def _deploy_in_hand(application: Application, connection) -> bool:
    """Whether the application's current deploy or roll-out has a job on its way: one holds its lock,
    is waiting or has just started, or none is there yet but the deploy was asked for moments ago (its
    request records it, then queues the job)."""
    if connection.exists(keyspace.lock("deploy", application.id)):
        return True
    jobs = [_job_in_hand(f"{kind}-{application.deploy_id}") for kind in ("deploy", "resume")]
    if any(jobs):
        return True
    asked = application.deploy_phases[0]["started_at"] if application.deploy_phases else None
    asked_s_ago = (utcnow() - datetime.fromisoformat(asked)).total_seconds() if asked else None
    return all(job is None for job in jobs) and asked_s_ago is not None and asked_s_ago < ENQUEUE_GRACE_S


def _retiring(application: Application, connection, host: str) -> bool:
    """Whether a job is on its way to stop the application's draining replicas on ``host``."""
    return (
        bool(connection.exists(keyspace.lock("retire", application.id)))
        or _deploy_in_hand(application, connection)
        or _job_in_hand(retire_job_id(application.deploy_id, host))
    )


def _reconcile_deploying(application: Application, connection, host: str) -> str:
    """A deploy whose job died: follow its servers if one is alive (a job of this host's), else fail it."""
    deploy_id = application.deploy_id
    if _deploy_in_hand(application, connection):
        return "checked"
    if not any(server_process(r) for r in _on(application, host) if r.deploy_id == deploy_id):
        fail_deploy(application, "The deploy job stopped before finishing (its worker died). Deploy again.")
        return "repaired"
    log_event(application.id, "the deploy job died while the servers were starting: following them to ready", "WARNING")
    queues.queue(queues.host_queue_name(queues.this_host())).enqueue(
        "jobs.deploy.resume_deploy",
        str(application.id),
        deploy_id,
        job_id=f"resume-{deploy_id}",
        job_timeout=int(current_app.config["DEPLOY_TIMEOUT_S"]) + 120,
    )
    return "resumed"


def _reconcile_running(application: Application, connection, host: str) -> str:
    """Each replica of a running application on this host: serving ones checked (a dead or silent one
    is replaced), replacements followed, draining ones whose roll-out died stopped."""
    outcome = "checked"
    job_in_hand = _deploy_in_hand(application, connection)
    if application.rolling_to is not None and not job_in_hand:
        end_roll_failed(
            application, application.deploy_id, "The roll-out's job stopped before finishing (its worker died)."
        )
        outcome = "repaired"
    dead: list[tuple[Replica, str]] = []
    for replica in _on(application, host):
        if replica.status == "ready":
            if reason := _judge(replica, connection):
                dead.append((replica, reason))
        elif replica.status == "starting" and replica.deploy_id != application.deploy_id:
            outcome = _follow_replacement(application, replica) or outcome
        elif replica.status == "draining" and not _retiring(application, connection, host):
            remove_replicas(application, [replica], current_app.config["STOP_GRACE_S"])
            log_event(application.id, f"replica {replica.id[:8]} stopped (its retirement's job had died)")
            outcome = "repaired"
    if dead:
        return _replace(application, dead)
    serving = [(r, p) for r in _on(application, host) if r.status == "ready" and (p := server_process(r))]
    if serving:
        _sample_usage(application, serving)
        if not connection.exists(keyspace.api_keys(application.id)):
            publish_keys(application)  # Redis lost its data (a restart without persistence)
        if not connection.exists(keyspace.plugin_chain(application.id)):
            plugins.publish_chain(application)
    return outcome


def _judge(replica: Replica, connection) -> str | None:
    """Why a serving replica counts as dead (None: it serves, or is busy and given time)."""
    process = server_process(replica)
    if process is None:
        return "the server process died"
    silence_key = keyspace.health_misses(replica.id)
    state = health(replica)
    if state and state.get("status") == "ready":
        connection.delete(silence_key)
        return None
    try:
        cpu = sum(process.cpu_times()[:2])
    except psutil.NoSuchProcess:
        return "the server process died"
    previous = Silence.load(connection.hgetall(silence_key))
    silence, reason = judge_silence(previous, cpu, time.time())
    if reason is None:
        if silence.busy_since is not None and previous.busy_since is None:
            log_event(
                replica.application_id, "a server is too busy to answer its health check; not restarting it", "WARNING"
            )
        connection.hset(silence_key, mapping=silence.dump())
        connection.expire(silence_key, BUSY_LIMIT_S * 2)
        return None
    connection.delete(silence_key)
    return reason


def _replace(application: Application, dead: list[tuple[Replica, str]]) -> str:
    """Dead replicas go; while others serve, each is replaced as the restart policy allows; the last
    one's death restarts (or fails) the whole application."""
    reason = dead[0][1]
    for replica, why in dead:
        log_event(
            application.id, f"replica {replica.id[:8]} (pid {replica.pid}, release {replica.release}): {why}", "WARNING"
        )
    remove_replicas(application, [replica for replica, _ in dead], grace_s=0)
    alive = [r for r in application.replicas if r.status in ("ready", "starting")]
    if not any(r.status == "ready" for r in alive):
        return restart_or_fail(application, reason)
    for release in sorted({replica.release for replica, _ in dead}):  # a canary's are replaced by its own
        wanted = int(get_release(application, release).setup["config"].get("replicas", 1))
        missing = wanted - len([r for r in alive if r.release == release])
        if missing > 0 and not _start_replacements(application, release, missing, reason):
            break
    return "replaced"


def _start_replacements(application: Application, release: int, count: int, reason: str) -> bool:
    """Start ``count`` replicas of ``release`` as the restart policy allows (the reconcile follows them
    to ready); whether each could start."""
    config = {**applications.DEFAULT_CONFIG, **application.config}
    for _ in range(count):
        decision = decide_restart(
            reason, config["restart_policy"], int(config["max_restarts"]), len(application.restarts or [])
        )
        if not decision.restart:
            log_event(application.id, f"not replaced: {decision.error} The other replicas serve on.", "WARNING")
            return False
        application.restarts = [*application.restarts, {"at": now_iso(), "reason": reason}]
        replica = Replica(release=release, deploy_id="r" + uuid.uuid4().hex[1:], host=queues.this_host())
        application.replicas.append(replica)
        db.session.commit()
        try:
            spawn(application, replica, ServingSetup.of(get_release(application, release)))
        except DeployFailed as e:
            remove_replicas(application, [replica], grace_s=0)
            log_event(application.id, f"the replacement replica could not start: {e}", "ERROR")
            return False
    return True


def _follow_replacement(application: Application, replica: Replica) -> str | None:
    """A replacement the reconcile started: ready (it joins the route), dead or too slow (it goes), or
    of a release that no longer serves (a roll-out or a canary ended meanwhile: it goes)."""
    if replica.release not in (application.deployed_release, application.canary_release):
        remove_replicas(application, [replica], grace_s=0)
        return "repaired"
    if server_process(replica) is None:
        remove_replicas(application, [replica], grace_s=0)
        log_event(application.id, "the replacement replica exited during start-up; see the logs", "ERROR")
        return "repaired"
    state = health(replica) or {}
    if state.get("status") == "ready":
        joined = db.session.execute(  # only if still starting: a drain or a removal meanwhile stands
            db.update(Replica).where(Replica.id == replica.id, Replica.status == "starting").values(status="ready")
        ).rowcount
        db.session.execute(db.update(Application).where(Application.id == application.id).values(updated_at=utcnow()))
        db.session.commit()
        if not joined:
            return None
        routing.publish(application.id)
        log_event(application.id, f"replacement replica ready at {endpoint_url(replica)}")
        return "replaced"
    late = (utcnow() - replica.started_at).total_seconds() > current_app.config["DEPLOY_TIMEOUT_S"]
    if state.get("status") == "failed" or late:
        remove_replicas(application, [replica], grace_s=0)
        log_event(application.id, "the replacement replica did not become ready; the others serve on", "ERROR")
        return "repaired"
    return None


def restart_or_fail(application: Application, reason: str) -> str:
    remove_replicas(application, list(application.replicas), grace_s=0)
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
        endpoint=None,
        rolling_to=None,
        canary_release=None,
        canary_percent=0,
    )
    log_event(application.id, decision.error, "ERROR")
    return "failed"


def _sample_usage(application: Application, serving: list[tuple[Replica, psutil.Process]]) -> None:
    """CPU and memory of the application's serving processes on this host, added up."""
    try:
        # Not inside oneshot(): it caches the CPU times, and the two readings would be the same (0 %).
        cpu_percent = sum(process.cpu_percent(interval=0.1) for _, process in serving)
        rss = threads = 0
        for _, process in serving:
            with process.oneshot():
                rss += process.memory_info().rss
                threads += process.num_threads()
    except psutil.NoSuchProcess:
        return
    usage = {
        "cpu_percent": cpu_percent,
        "rss_bytes": rss,
        "threads": threads,
        "replicas": len(serving),
        "sampled_at": now_iso(),
    }
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
