"""Deploy, roll out and stop: the lifecycle's transitions as jobs (the real processes behind endpoints).

A deploy runs as an RQ job on the host it is placed on (hosts.py: the engine installed, the memory the
model needs, or the host it is pinned to; any worker when no host has announced itself). It starts the
application's replicas (``replicas`` servers, server_processes.py) on that worker's host, each recorded
as a Replica row, so the stop and the reconcile (reconcile.py) for them go to that host's queue. Replicas
always start from a release: a deploy of a stopped application starts the newest; deploying a running
one rolls it out beside the release that serves (a roll-out): the new replicas must be ready before any
gateway sends them a request, then the old ones drain (they finish what they have) and stop. A roll-out
that fails leaves the old release serving. Each step reports to the application's log (platform_log.py).
"""

import time
import uuid
from datetime import datetime, timedelta

import psutil
import redis
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from .. import engines, keyspace, queues
from ..extensions import db
from ..i18n import _l
from ..models import Application, Replica, utcnow
from ..runtime import logs
from . import NotFound, ServiceError, api_keys, audit, hosts, lifecycle, releases, replicas, routing
from .platform_log import log_event
from .server_processes import DeployFailed, Superseded, health, kill_orphan, model_of, server_process, spawn
from .server_spec import ServingSetup

PHASES = ("queued", "starting process", "loading model", "warming up", "ready")
# A managed engine's (llmapp/engines/managed.py): the server starts the engine, which loads the weights.
ENGINE_PHASES = ("queued", "starting process", "starting engine", "loading weights", "warming up", "ready")
# What a page calls each phase and a replica's state (the values are data: the API and the CLI keep them).
PHASE_LABELS = {
    "queued": _l("queued"),
    "starting process": _l("starting process"),
    "loading model": _l("loading model"),
    "starting engine": _l("starting engine"),
    "loading weights": _l("loading weights"),
    "warming up": _l("warming up"),
    "ready": _l("ready"),
}
REPLICA_LABELS = {"starting": _l("starting"), "ready": _l("ready"), "draining": _l("draining")}
HEALTH_PHASES = {
    "starting_engine": "starting engine",
    "loading_weights": "loading weights",
    "loading": "loading model",
    "warming_up": "warming up",
    "ready": "ready",
}
LOCK_TTL_S = 5  # a deploy job's lock, renewed while it runs; a lock that lapses means the job died
LOCK_WAIT_S = 20  # for the lock a previous job holds while it finishes, before this one counts as a duplicate
SUPERSEDED_CHECK_S = 1.0  # how often a deploy waiting for its servers checks it is still the application's


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
    """Move the phases of the application's current deploy (a deploy ended meanwhile changes nothing:
    the UPDATE is conditional, and the row object is not written)."""
    deploy_id, phases = application.deploy_id, _advance(application.deploy_phases or [], name, status)
    db.session.execute(
        db.update(Application)
        .where(Application.id == application.id, Application.deploy_id == deploy_id)
        .values(deploy_phases=phases)
    )
    db.session.commit()


def _still_under_way(application_id, deploy_id: str, rolling: bool) -> bool:
    """Whether the deploy ``deploy_id`` is still the application's (no stop, restart or repair ended
    it), read on a connection of its own (the job's session keeps what it holds)."""
    with db.engine.connect() as connection:
        row = connection.execute(
            db.select(Application.status, Application.deploy_id, Application.rolling_to).where(
                Application.id == uuid.UUID(str(application_id))
            )
        ).first()
    if row is None or row.deploy_id != deploy_id:
        return False
    if rolling:
        return row.status == lifecycle.RUNNING and row.rolling_to is not None
    return row.status == lifecycle.DEPLOYING


# --- deploy and roll out -------------------------------------------------------------------------


def request_deploy(
    application: Application, *, restart_reason: str | None = None, delay_s: float = 0, canary_percent: int = 0
) -> str:
    """Deploy the application's newest release and enqueue the job; return the deploy id. A stopped or
    failed one moves to deploying; a running one stays running and rolls the release out beside the
    one serving (the same release again: fresh replicas, no request dropped); with ``canary_percent``,
    as a canary taking that share beside it (canaries.py).

    :raise TransitionRefused: it is on its way somewhere, or already rolling a release out.
    :raise ServiceError: Redis is unreachable (the application is left as it was).
    """
    application_id = application.id
    try:
        queues.connection().ping()  # before anything changes: no deploy half-done for want of Redis
        host = hosts.place(application)  # where it fits (ServiceError: nowhere), before anything changes
    except redis.RedisError as e:
        raise ServiceError(
            _("The deploy could not be queued: Redis is unreachable. Nothing changed; try again.")
        ) from e
    deploy_id = uuid.uuid4().hex
    values = {"deploy_id": deploy_id, "deploy_phases": _advance([], "queued"), "last_error": None}
    current = db.session.get(Application, application_id)  # in this session (the caller's may be detached)
    rolling = current is not None and current.status == lifecycle.RUNNING and not restart_reason
    if restart_reason:  # the release that crashed: a draft saved meanwhile is not deployed by itself
        number = current.deployed_release if current is not None else None
        values["restarts"] = [*application.restarts, {"at": now_iso(), "reason": restart_reason}]
        lifecycle.transition(
            application_id, "restart", endpoint=None, rolling_to=None, canary_release=None, canary_percent=0, **values
        )
        log_event(
            application_id,
            f"restarting in {delay_s:g} s (restart {len(values['restarts'])}): {restart_reason}",
            "WARNING",
        )
    elif rolling:  # a running application can't be deleted meanwhile: its release is recorded first
        number, serving = releases.record(current, None, releases.DEPLOYED_NOTE).number, current.deployed_release
        lifecycle.begin_roll(application_id, rolling_to=number, canary_percent=canary_percent, restarts=[], **values)
        as_what = f"as a canary taking {canary_percent} % of the requests" if canary_percent else "in its place"
        log_event(application_id, f"rolling out release {number} {as_what} (release {serving} serves meanwhile)")
    else:
        lifecycle.transition(application_id, "deploy", restarts=[], endpoint=None, **values)
        log_event(application_id, "deploy requested")
        number = None
    if number is None:  # deploying now: it can't be deleted meanwhile
        number = releases.record(db.session.get(Application, application_id), None, releases.DEPLOYED_NOTE).number
    args = ("jobs.deploy.deploy_application", str(application_id), deploy_id, number)
    options = {"job_id": f"deploy-{deploy_id}", "job_timeout": int(current_app.config["DEPLOY_TIMEOUT_S"]) + 120}
    try:
        queue = queues.queue(queues.host_queue_name(host)) if host else queues.queue()
        if delay_s:
            queue.enqueue_in(timedelta(seconds=delay_s), *args, **options)
        else:
            queue.enqueue(*args, **options)
    except redis.RedisError as e:
        if rolling:
            end_roll_failed(db.session.get(Application, application_id), deploy_id, "The job queue was unreachable.")
        else:
            lifecycle.transition(application_id, "deploy_failed", last_error="The job queue (Redis) was unreachable.")
        raise ServiceError(_("The deploy could not be queued: Redis is unreachable. Try again shortly.")) from e
    return deploy_id


def rollback(application: Application, number: int | None, author) -> str:
    """Deploy release ``number`` (default: the one that served before the one deployed) again, as the application's
    next release: rolled out while it runs, deployed when it is stopped or failed. Returns the deploy id.

    :raise NotFound: no such release. :raise TransitionRefused: it is on its way somewhere, or rolling.
    """
    if application.rolling_to is not None:
        raise lifecycle.TransitionRefused(
            _(
                "Release %(release)s is being rolled out; wait until it serves or fails.",
                release=application.rolling_to,
            ),
            application.status,
        )
    if application.canary_release is not None:  # refused before the row changes: no release made for nothing
        raise lifecycle.TransitionRefused(
            _("Release %(release)s runs as a canary: promote or abort it first.", release=application.canary_release),
            application.status,
        )
    if number is None:
        number = releases.served_before(application)
        if number is None:
            raise NotFound(
                _(
                    "%(name)s has served no other release to roll back to; name one (--to).",
                    name=application.name,
                )
            )
    releases.restore(application, number, author)
    audit.record("application.rollback", application, {"release": (application.deployed_release, number)})
    return request_deploy(application)  # its transition commits the entry


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


def _current_phase(application: Application) -> str:
    return application.deploy_phases[-1]["name"] if application.deploy_phases else "starting process"


def phases_of(setup: ServingSetup) -> tuple[str, ...]:
    """The phases a deploy of ``setup`` goes through (its engine's kind decides)."""
    return ENGINE_PHASES if isinstance(engines.kind(model_of(setup).engine), engines.ManagedKind) else PHASES


def wait_ready(
    application: Application,
    deploy_id: str,
    rolling: bool,
    replica: Replica,
    process: psutil.Process,
    deadline: float,
    phases: tuple[str, ...] = PHASES,
) -> None:
    """Follow one replica's server until it is ready, fails, exits or runs past ``deadline`` (a
    monotonic time), moving the deploy's phases forward as it goes.

    :raise Superseded: the deploy was ended meanwhile. :raise DeployFailed: with the reason.
    """
    checked = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - checked >= SUPERSEDED_CHECK_S:
            if not _still_under_way(application.id, deploy_id, rolling):
                raise Superseded("the deploy was ended meanwhile (a stop, a restart or a repair)")
            checked = time.monotonic()
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            try:  # a fork server's child is reaped by it: its code is not this job's to read
                code = process.wait(0) if process.is_running() else None
            except psutil.TimeoutExpired:
                code = None
            detail = _last_error_line(application)
            raise DeployFailed(
                f"The server process exited during start-up{f' (code {code})' if code else ''}"
                f"{': ' + detail if detail else ''}. See the logs."
            )
        state = health(replica, timeout=1.0)
        if state:
            if state.get("status") == "failed":
                raise DeployFailed(
                    f"The model could not be loaded: {state.get('error') or _last_error_line(application)}"
                )
            phase, current = HEALTH_PHASES.get(state.get("status")), _current_phase(application)
            if phase in phases and current in phases and phases.index(phase) > phases.index(current):
                for name in phases[phases.index(current) + 1 : phases.index(phase) + 1]:
                    _set_phase(application, name)
            if phase == "ready":
                return
        time.sleep(0.05)
    raise DeployFailed(
        f"The server was not ready within {current_app.config['DEPLOY_TIMEOUT_S']:g} s "
        f"(it was {_current_phase(application)})."
    )


def _start_replicas(
    application: Application, deploy_id: str, number: int | None, resumed: bool, started: list
) -> ServingSetup:
    """Start the deploy's replicas of release ``number`` into ``started`` (with their processes; those
    a previous run of its job started are followed; None: the release they run, else the newest).

    :raise DeployFailed: one could not be started, or the job's earlier run left none alive.
    """
    mine = [r for r in application.replicas if r.deploy_id == deploy_id]
    number = number or (mine[0].release if mine else None)
    try:
        release = (
            releases.get(application, number) if number else releases.record(application, None, releases.DEPLOYED_NOTE)
        )
    except NotFound as e:
        raise DeployFailed(str(e)) from e
    setup = ServingSetup.of(release)
    for replica in mine:
        process = server_process(replica)
        if process is None:
            application.replicas.remove(replica)  # never started, or died: started again below
        else:
            started.append((replica, process))
    db.session.commit()
    if resumed and not started:
        raise DeployFailed("The deploy job stopped before finishing (its worker died). Deploy again.")
    if not started:
        _set_phase(application, "starting process")
    while len(started) < setup.serving_config().replicas:
        replica = Replica(release=release.number, deploy_id=deploy_id, host=queues.this_host(), status="starting")
        application.replicas.append(replica)
        db.session.commit()
        started.append((replica, spawn(application, replica, setup)))
    return setup


def run_deploy(application_id, deploy_id: str, number: int | None = None, resumed: bool = False) -> str:
    """The deploy job's work: start the release's replicas, wait until each is ready, then serve them
    (running; or, for a roll-out, in place of the old ones). Failed: what it started is killed.

    Idempotent: a second run for the same deploy finds the lock or the processes and starts nothing.
    ``number``: the release to serve. ``resumed``: the reconcile found the deploy without its job, its
    servers alive; follow them.
    """
    connection = queues.connection()
    with queues.held_lock(connection, keyspace.lock("deploy", application_id), LOCK_TTL_S, wait_s=LOCK_WAIT_S) as held:
        if not held:  # the reconcile repairs it, as a deploy whose job died
            log_event(application_id, "a deploy job found another one still at work on this application", "WARNING")
            return "another job is deploying this application"
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.deploy_id != deploy_id:
            return "stale deploy: nothing to do"
        rolling = application.status == lifecycle.RUNNING and application.rolling_to is not None
        if application.status != lifecycle.DEPLOYING and not rolling:
            return "stale deploy: nothing to do"
        log_event(application.id, "deploy resumed: following the servers to ready" if resumed else "deploy job started")
        started: list[tuple[Replica, psutil.Process]] = []
        try:
            if not rolling:  # what a crashed deploy or server left goes first
                replicas.remove(application, [r for r in application.replicas if r.deploy_id != deploy_id], grace_s=0)
            setup = _start_replicas(application, deploy_id, number, resumed, started)
            deadline, phases = _deadline(application), phases_of(setup)
            for replica, process in started:
                wait_ready(application, deploy_id, rolling, replica, process, deadline, phases)
            _set_phase(application, None)
            new = [replica for replica, _ in started]
            return _serve_rolled(application, deploy_id, new) if rolling else _serve_deployed(application, new, resumed)
        except (ObjectDeletedError, StaleDataError) as e:  # its rows went meanwhile (a stop): ended
            _abandon(application_id, deploy_id, started)
            return f"ended meanwhile: {e}"
        except DeployFailed as e:
            if isinstance(e, Superseded) or not _still_under_way(application_id, deploy_id, rolling):
                _abandon(application_id, deploy_id, started)
                return f"ended meanwhile: {e}"
            if rolling:
                end_roll_failed(application, deploy_id, str(e))
            else:
                fail_deploy(application, str(e))
            return f"failed: {e}"


def _abandon(application_id, deploy_id: str, started: list) -> None:
    """A deploy ended meanwhile: kill the servers it started (their rows may be gone already) and
    forget what is left of them."""
    db.session.rollback()
    for _replica, process in started:
        kill_orphan(process.pid, str(application_id))
    application_uuid = uuid.UUID(str(application_id))
    mine = db.select(Replica).where(Replica.application_id == application_uuid, Replica.deploy_id == deploy_id)
    leftover = db.session.scalars(mine).all()
    application = db.session.get(Application, application_uuid)
    if application is not None and leftover:
        replicas.remove(application, leftover, grace_s=0)


def _serve_deployed(application: Application, new: list[Replica], resumed: bool) -> str:
    for replica in new:
        replica.status = "ready"
    releases.mark_served(application.id, new[0].release)
    db.session.commit()
    # Its keys before anyone sees it running: a key made once it runs is published by its maker, and
    # a publish of what this job read earlier must not come after that one and drop it.
    api_keys.publish_keys(application)
    try:
        lifecycle.transition(
            application.id,
            "deployed",
            endpoint=replicas.endpoint_url(new[0]),
            deployed_at=utcnow(),
            deployed_release=new[0].release,
        )
    except lifecycle.TransitionRefused as e:
        raise Superseded("the deploy was settled meanwhile by the reconcile") from e
    where = f"release {new[0].release} running at {replicas.endpoint_url(new[0])}" + (
        f" and {len(new) - 1} more replica{'s' if len(new) > 2 else ''}" if len(new) > 1 else ""
    )
    log_event(
        application.id,
        f"deploy completed by the reconcile (its job had died): {where}" if resumed else where,
    )
    return "running"


def _serve_rolled(application: Application, deploy_id: str, new: list[Replica]) -> str:
    """The roll-out's replicas are ready: they serve, the old ones drain and stop (a canary's serve
    beside them instead)."""
    previous, share = application.deployed_release, application.canary_percent
    if share:
        return _serve_canary(application, deploy_id, new, previous, share)
    served = lifecycle.end_roll(
        application.id,
        deploy_id,
        deployed_release=new[0].release,
        endpoint=replicas.endpoint_url(new[0]),
        deployed_at=utcnow(),
    )
    if not served:  # stopped, restarted or repaired meanwhile: what it started is not wanted
        raise Superseded("the roll-out was ended meanwhile")
    old = [r for r in application.replicas if r not in new]
    for replica in new:
        replica.status = "ready"
    for replica in old:
        replica.status = "draining"
    releases.mark_served(application.id, new[0].release)
    db.session.commit()
    routing.publish(application.id)
    log_event(
        application.id,
        f"release {new[0].release} serves ({len(new)} replica{'s' if len(new) != 1 else ''}); "
        f"release {previous}'s replicas finish what they have, then stop",
    )
    replicas.retire(application, deploy_id, old)
    return "running"


def _serve_canary(application: Application, deploy_id: str, new: list[Replica], previous: int, share: int) -> str:
    if not lifecycle.end_roll(application.id, deploy_id, canary_release=new[0].release):
        raise Superseded("the roll-out was ended meanwhile")
    for replica in new:
        replica.status = "ready"
    db.session.commit()
    routing.publish(application.id)
    log_event(
        application.id,
        f"canary: release {new[0].release} takes {share} % of the gateway's requests, release {previous} the rest",
    )
    return "canary"


def end_roll_failed(application: Application, deploy_id: str, reason: str) -> None:
    """A roll-out that could not serve: what it started is killed; the release serving goes on."""
    mine = [r for r in application.replicas if r.deploy_id == deploy_id]
    replicas.remove(application, mine, grace_s=0)
    _set_phase(application, None, "failed")
    if lifecycle.end_roll(application.id, deploy_id, last_error=reason, canary_percent=0):
        db.session.commit()
        routing.publish(application.id)
        log_event(
            application.id,
            f"the roll-out failed; release {application.deployed_release} keeps serving: {reason}",
            "ERROR",
        )
    else:
        db.session.rollback()


def fail_deploy(application: Application, reason: str) -> None:
    """Kill what the deploy started and record it failed, with the reason in words."""
    replicas.remove(application, list(application.replicas), grace_s=0)
    _set_phase(application, None, "failed")
    try:
        lifecycle.transition(application.id, "deploy_failed", last_error=reason)
    except lifecycle.TransitionRefused:
        return  # another job or the reconcile settled it meanwhile
    log_event(application.id, f"deploy failed: {reason}", "ERROR")
