"""Hosts: the machines whose workers start app servers. Each worker announces its host in Redis every few
seconds (name, advertised address, CPUs, memory, GPUs, engines installed), on Redis's clock, so hosts
whose clocks differ agree on who is up. A host whose announcement is older than HOST_DOWN_AFTER_S is
down: the platform marks its replicas lost and, where the restart policy says so, deploys their
applications again on a host that is up (``recover``). A deploy is placed (``place``) on a host that
has the engine installed and the memory the model needs, or the one the application is pinned to; one
that fits nowhere fails with what it needs and what the biggest host has.
"""

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

import psutil
import redis
from flask import current_app
from flask_babel import gettext as _

from .. import engines, keyspace, queues
from ..extensions import db
from ..i18n import _l
from ..models import Application, Replica
from . import ServiceError, require_admin

KEEP_S = 24 * 3600  # a host gone this long leaves the list
ADMIN_ONLY = _l("Only admins see the hosts.")


@dataclass
class Host:
    name: str
    address: str
    cpus: int
    memory_bytes: int
    memory_available_bytes: int
    gpus: list[dict] = field(default_factory=list)  # {"name", "memory_bytes"}
    engines: list[str] = field(default_factory=list)  # the managed engines installed there
    heartbeat: float = 0.0  # Redis's time of its last announcement
    up: bool = False
    seconds_since: float = 0.0
    replicas: list[dict] = field(default_factory=list)  # {"application", "release", "status", "port"}

    def as_dict(self) -> dict:
        return asdict(self)


def gpus() -> list[dict]:
    """This host's NVIDIA GPUs (name, memory), from nvidia-smi; none where it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        name, _, mib = line.rpartition(",")
        if name and mib.strip().isdigit():
            gpus.append({"name": name.strip(), "memory_bytes": int(mib.strip()) * 2**20})
    return gpus


def facts() -> dict:
    """What this host announces."""
    from . import engine_installs

    memory = psutil.virtual_memory()
    return {
        "name": queues.this_host(),
        "address": current_app.config["ADVERTISE_HOST"],
        "cpus": os.cpu_count() or 1,
        "memory_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "gpus": gpus(),
        "engines": [name for name in engines.managed_names() if engine_installs.installed(name)],
    }


def _redis_now(connection) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6


def announce(found: dict | None = None) -> None:
    """Say this host is up (the workers' scheduler calls it every HOST_HEARTBEAT_S)."""
    connection = queues.connection()
    found = found or facts()
    value = json.dumps({**found, "heartbeat": _redis_now(connection)})
    pipe = connection.pipeline()
    pipe.set(keyspace.host(found["name"]), value, ex=KEEP_S)
    pipe.sadd(keyspace.hosts(), found["name"])
    pipe.execute()


def known() -> list[Host]:
    """Every host that announced itself within a day, up or down, by name."""
    connection = queues.connection()
    names = sorted(n.decode(errors="replace") for n in connection.smembers(keyspace.hosts()))
    values = connection.mget([keyspace.host(name) for name in names]) if names else []
    now, down_after = _redis_now(connection), current_app.config["HOST_DOWN_AFTER_S"]
    found = []
    for name, value in zip(names, values, strict=True):
        if value is None:
            connection.srem(keyspace.hosts(), name)  # gone for a day
            continue
        try:
            data = json.loads(value)
            host = Host(**{k: data[k] for k in Host.__dataclass_fields__ if k in data})
        except (ValueError, TypeError):
            continue
        host.seconds_since = max(0.0, now - host.heartbeat)
        host.up = host.seconds_since < down_after
        found.append(host)
    return found


HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # as a host's name may be pinned


def checked_pin(value, default: str, errors: list[str]) -> str:
    """An application's ``host`` field: "" (any host that fits) or a host's name (it need not be up now:
    the deploy says so then). A broken rule is added to ``errors``."""
    value = default if value is None else value
    if not isinstance(value, str):
        errors.append(_("Must be text."))
        return ""
    if value.strip() and not HOST_NAME.match(value.strip()):
        errors.append(_("A host's name: letters, digits, “.”, “_” and “-”, at most 63 characters."))
    return value.strip()


def offered() -> list[Host]:
    """The hosts a form offers to pin to: those known (none while Redis is unreachable)."""
    try:
        return known()
    except redis.RedisError:
        return []


def list_hosts(acting) -> list[Host]:
    """The hosts with the replicas each runs (admins only)."""
    require_admin(acting, ADMIN_ONLY)
    hosts = known()
    rows = db.session.execute(
        db.select(Replica.host, Application.name, Replica.release, Replica.status, Replica.port)
        .join(Application, Application.id == Replica.application_id)
        .order_by(Application.name)
    ).all()
    by_name = {host.name: host for host in hosts}
    for host_name, name, release, status, port in rows:
        host = by_name.get(host_name)
        if host is None:  # a replica on a host that never announced (a worker from before hosts)
            host = by_name[host_name] = Host(host_name, "", 0, 0, 0)
            hosts.append(host)
        host.replicas.append({"application": name, "release": release, "status": status, "port": port})
    return sorted(hosts, key=lambda h: h.name)


def _need(application: Application) -> tuple[int, str | None]:
    """The memory one replica of the application needs (its model and one batch's KV cache), and the
    managed engine it needs installed (None: a built-in one)."""
    from .applications import recommendation_for
    from .registry import get_model

    model = get_model(application.model_id)
    try:
        kind = engines.kind(model.engine)
    except Exception:  # noqa: BLE001 - an engine this platform no longer has: the deploy says so itself
        return 0, None
    managed = model.engine if isinstance(kind, engines.ManagedKind) else None
    try:
        recommendation = recommendation_for(model)
    except ServiceError:
        return 0, managed  # nothing to reckon with: any host with the engine
    if recommendation.upstream:
        return 0, managed
    batch = int(application.config.get("batch_size") or 1)
    return recommendation.model_memory_bytes + recommendation.kv_cache_per_sequence_bytes * batch, managed


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def _fits_nowhere(name: str, need: int, engine: str | None, pinned: str, biggest: Host) -> str:
    """Why an application fits on no host: what it needs, and what the biggest host (or its pinned one) has."""
    values = {
        "name": name,
        "memory": _gib(need),
        "engine": engine,
        "host": pinned or biggest.name,
        "free": _gib(biggest.memory_available_bytes),
        "engines": ", ".join(biggest.engines) or _("none installed"),
    }
    if pinned and engine:
        return _(
            "%(name)s fits on no host: it needs %(memory)s of memory and the %(engine)s engine; its pinned host "
            "%(host)s has %(free)s free, engines: %(engines)s.",
            **values,
        )
    if pinned:
        return _(
            "%(name)s fits on no host: it needs %(memory)s of memory; its pinned host %(host)s has %(free)s free.",
            **values,
        )
    if engine:
        return _(
            "%(name)s fits on no host: it needs %(memory)s of memory and the %(engine)s engine; the biggest host "
            "that is up, %(host)s, has %(free)s free, engines: %(engines)s.",
            **values,
        )
    return _(
        "%(name)s fits on no host: it needs %(memory)s of memory; the biggest host that is up, %(host)s, has "
        "%(free)s free.",
        **values,
    )


def place(application: Application) -> str | None:
    """The host the application's next deploy runs on; None when no host has announced itself (workers
    from before hosts: any worker takes it).

    :raise ServiceError: it fits nowhere (or its pinned host is down or doesn't fit): what it needs, and
        what the biggest host that is up has.
    """
    hosts = [host for host in known() if host.up]
    if not hosts:
        return None
    per_replica, engine = _need(application)
    need = per_replica * int(application.config.get("replicas") or 1)
    pinned = application.config.get("host") or ""
    if pinned:
        pin = next((host for host in hosts if host.name == pinned), None)
        if pin is None:
            raise ServiceError(
                _("%(name)s is pinned to the host %(host)s, which is not up.", name=application.name, host=pinned)
            )
        hosts = [pin]
    # The engine installed: where it is, if anywhere (installed nowhere, the deploy's own check fails it
    # at once, naming the command that installs it).
    hosts = [h for h in hosts if engine is None or engine in h.engines] or hosts
    fitting = [h for h in hosts if h.memory_available_bytes >= need]
    if not fitting:
        biggest = max(hosts, key=lambda h: h.memory_available_bytes)
        raise ServiceError(_fits_nowhere(application.name, need, engine, pinned, biggest))
    # The most memory left over after it: deploys spread over the hosts.
    return max(fitting, key=lambda h: (h.memory_available_bytes - need, -len(h.replicas))).name


def recover_locked() -> dict:
    """``recover``, by one worker at a time (the others skip)."""
    connection = queues.connection()
    connection.delete(keyspace.recover_queued())  # the next one may be queued
    with queues.held_lock(connection, keyspace.recover_lock(), 120) as held:
        return recover() if held else {"skipped": "another worker is recovering"}


def recover() -> dict:
    """Replicas on hosts that are down: lost. Each is removed (its host's worker kills the process if the
    host comes back), the application's log says so, and an application left with no replica that
    serves is restarted elsewhere as its restart policy says (the reconcile's own decision), or fails
    naming the host. Any host's worker runs it, one at a time (a lock)."""
    from . import lifecycle
    from .platform_log import log_event
    from .reconcile import restart_or_fail
    from .replicas import remove

    down = {host.name for host in known() if not host.up}
    summary = {"lost": 0, "restarted": 0, "failed": 0}
    if not down:
        return summary
    lost = db.session.scalars(db.select(Replica).where(Replica.host.in_(down))).all()
    for application_id in sorted({replica.application_id for replica in lost}, key=str):
        application = db.session.get(Application, application_id)
        gone = [replica for replica in lost if replica.application_id == application_id]
        where = ", ".join(sorted({replica.host for replica in gone}))
        summary["lost"] += len(gone)
        log_event(application_id, f"{len(gone)} replica(s) lost: the host {where} stopped answering", "ERROR")
        serving_elsewhere = [r for r in application.replicas if r not in gone and r.status == "ready"]
        if application.status == lifecycle.RUNNING and not serving_elsewhere:
            try:
                summary[restart_or_fail(application, f"its host {where} is down")] += 1
            except ServiceError as e:  # placed nowhere: the deploy could not be asked for
                lifecycle.transition(
                    application_id, "crashed", last_error=f"Its host {where} is down, and {e}", endpoint=None
                )
                summary["failed"] += 1
        else:
            remove(application, gone, grace_s=0)
    return summary
