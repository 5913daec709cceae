"""Deploy, stop, restart and reconcile application servers: the real processes behind endpoints.

A deploy runs as an RQ job on any worker; the server it starts runs on that worker's host, recorded
on the application, so the stop and the reconcile for it go to that host's queue. Each step reports
to the application's log (a Redis Stream, see runtime/logs.py).
"""

import hashlib
import itertools
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import redis
from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .. import ROOT, keyspace, queues, secrets_box
from ..extensions import db
from ..models import ApiKey, Application, utcnow
from ..runtime import keys as runtime_keys
from ..runtime import logs
from ..runtime.plugins.published import CHAIN_KEY_VARIABLE
from ..runtime.spec import REDIS_URL_VARIABLE, ServerSpec, ServingConfig
from . import ServiceError, applications, environment, lifecycle, metrics, model_detection, plugins, registry

PHASES = ("queued", "starting process", "loading model", "warming up", "ready")
HEALTH_PHASES = {"loading": "loading model", "warming_up": "warming up", "ready": "ready"}
# What a server inherits from its worker's environment: the system's basics and what its engine and
# libraries read. Nothing else (cloud credentials, the platform's own secrets) reaches user-configured
# servers; operators add names with LLMAPP_SERVER_ENV_ALLOW.
INHERITED_ENV = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
        "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
        "http_proxy", "https_proxy", "no_proxy",
    }
)  # fmt: skip
NOGROUP_GID = 65534  # the group of servers' own accounts (Debian's nogroup): it owns nothing either
# How a server starts under `python -I` (no current folder on sys.path): the project's root is put first.
SERVER_LAUNCHER = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from llmapp.runtime.__main__ import main; main()"
LOCK_TTL_S = 5  # a deploy job's lock, renewed while it runs; a lock that lapses means the job died
RECONCILE_LOCK_TTL_S = 30
HEALTH_TIMEOUT_S = 2.0
SILENT_CHECKS = 3  # unanswered health checks, with no CPU used meanwhile, before a server counts as dead
BUSY_LIMIT_S = 120  # a server that answers nothing while it keeps using CPU is hung after this long


class DeployFailed(Exception):
    """Why a deploy failed, in words for the user."""


def log_event(application_id, message: str, level: str = "INFO") -> None:
    """Add a line to the application's log; the platform's work never fails for want of its log."""
    try:
        logs.append(queues.connection(), application_id, message, level, source="platform")
    except redis.RedisError as e:
        current_app.logger.warning("application %s: %s (not in its log: Redis: %s)", application_id, message, e)


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
        values["restarts"] = [*application.restarts, {"at": _now_iso(), "reason": restart_reason}]
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


def _spec(application: Application, port: int) -> ServerSpec:
    model = registry.get_model(application.model_id)
    config = current_app.config
    return ServerSpec(
        app_id=str(application.id),
        app_name=application.name,
        deploy_id=application.deploy_id,
        engine=model.engine,
        model_name=model.name,
        model_path=model.source,
        precision=model.precision,
        base_url=model.base_url,
        upstream_model=model.upstream_model,
        api_key_env=model.api_key_env or "OPENAI_API_KEY",
        config=ServingConfig.from_dict({**applications.default_config(), **application.config}),
        host=config["ADVERTISE_HOST"],
        bind=config["BIND_HOST"],
        port=port,
        grace_s=config["STOP_GRACE_S"],
        max_request_bytes=int(config["MAX_REQUEST_MB"] * 1024 * 1024),
        secret_names=tuple(var.name for var in application.env_vars if var.is_secret),
        metrics_flush_s=config["METRICS_FLUSH_S"],
        metrics_token_sha256=hashlib.sha256(metrics.metrics_token().encode()).hexdigest(),
        max_header_bytes=config["SERVER_MAX_HEADER_KB"] * 1024,
        header_timeout_s=config["SERVER_HEADER_TIMEOUT_S"],
        keep_alive_s=config["SERVER_KEEP_ALIVE_S"],
        max_connections=config["SERVER_MAX_CONNECTIONS"],
        webhook_allow=config["WEBHOOK_ALLOWED_DESTINATIONS"],
    )


def _environment(application: Application, user: "ServerUser | None") -> dict:
    """The server's environment: an allow-list of the worker's, the application's own variables, where
    Redis is. A variable of a kind members may not set (stored before the rule existed) fails the deploy."""
    allowed = INHERITED_ENV | set(current_app.config["SERVER_ENV_ALLOW"])
    env = {k: v for k, v in os.environ.items() if k in allowed or k.startswith("LC_")}
    for var in application.env_vars:
        if why := environment.refusal(var.name):
            raise DeployFailed(f"{why} Remove it from the application's environment variables.")
        try:
            env[var.name] = secrets_box.decrypt(var.value) if var.is_secret else var.value
        except ValueError as e:
            raise DeployFailed(f"The secret {var.name} could not be decrypted ({e}); enter it again.") from e
    if user is not None:  # nothing of root's home or temporary files
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env[REDIS_URL_VARIABLE] = current_app.config["REDIS_URL"]
    env[CHAIN_KEY_VARIABLE] = secrets_box.application_key(application.id).decode()
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class ServerUser:
    """The unprivileged account app servers run as when the platform runs as root."""

    name: str
    uid: int
    gid: int
    home: str

    def can_read(self, path: Path) -> bool:
        """Whether this account may open ``path`` (a file, or a folder to list), judged from the mode bits
        of it and every folder above it."""
        path = Path(path).resolve()
        try:
            for folder in reversed(path.parents):
                if not self._allows(folder.stat(), 0o1):
                    return False
            return self._allows(path.stat(), 0o5 if path.is_dir() else 0o4)
        except OSError:
            return False

    def _allows(self, st: os.stat_result, bits: int) -> bool:
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid == self.gid:
            shift = 3
        else:
            shift = 0
        return (st.st_mode >> shift) & bits == bits


def server_user(application: Application, port: int) -> ServerUser | None:
    """Who the application's server runs as (None: the platform's own account).

    A platform that isn't root can't switch accounts. As root, by default each server gets an account
    of its own: the uid LLMAPP_SERVER_UID_BASE plus its port's place in LLMAPP_SERVER_PORTS (unique on
    the host while it runs), in nobody's group, owning no file; so it can't read the platform's secret
    key, its SQLite database, other applications' specs, nor another server's memory or environment
    (/proc needs the same uid). That account must reach the interpreter, the code and the model through
    their "others" permissions; when it can't, the server runs as root and the platform's log says what
    to open up. LLMAPP_SERVER_USER names one account for every server instead; a deploy fails when it
    can't read what it needs.
    """
    if os.geteuid() != 0:
        return None
    configured = current_app.config["SERVER_USER"]
    if configured:
        try:
            entry = pwd.getpwnam(configured)
        except KeyError as e:
            raise DeployFailed(
                f"The server user {configured} (LLMAPP_SERVER_USER) does not exist on {queues.this_host()}."
            ) from e
        if entry.pw_uid == 0:
            return None  # the operator chose root
        home = "/nonexistent" if entry.pw_dir in ("", "/") else entry.pw_dir
        user = ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, home)
    else:
        uid = current_app.config["SERVER_UID_BASE"] + current_app.config["SERVER_PORTS"].index(port)
        user = ServerUser(f"llmapp-server-{uid}", uid, NOGROUP_GID, "/nonexistent")
    unreadable = next((path for path in _needed_paths(application) if not user.can_read(path)), None)
    if unreadable is None:
        return user
    why = (
        f"servers run as unprivileged accounts ({user.name} here; the platform runs as root), which cannot read "
        f"{unreadable}. Make it readable for others (chmod o+rX, and o+x on the folders above it)"
    )
    if configured:
        raise DeployFailed(f"{why[0].upper()}{why[1:]}, or name another account in LLMAPP_SERVER_USER.")
    # The host's paths are the operator's business: the platform's log has them, the member's log a line.
    current_app.logger.warning("application %s: its server runs as root: %s.", application.id, why)
    log_event(application.id, "this server runs with the platform's rights (an operator can change that)", "WARNING")
    return None


def _needed_paths(application: Application) -> list[Path]:
    """What a server must read: the interpreter and its standard library, the packages, the code, the model."""
    paths = sysconfig.get_paths()
    needed = [Path(sys.executable), Path(paths["stdlib"]), Path(paths["purelib"]), Path(ROOT) / "llmapp"]
    model = registry.get_model(application.model_id)
    if model.engine == "transformers":
        folder = Path(model.source)
        try:  # the weights may be owner-only; what is in sub-folders (rare) is found by the load
            needed += [folder, *(path for path in folder.iterdir() if path.is_file())]
        except OSError as e:
            raise DeployFailed(f"The model directory {folder} could not be read: {e.strerror}.") from e
    return needed


def run_dir() -> Path:
    """Where servers' specs and output go: readable by the platform's user only."""
    path = Path(current_app.instance_path) / "run"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As uvicorn binds: a port left in TIME_WAIT by the application's previous server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((current_app.config["BIND_HOST"], port))
        except OSError:
            return False
    return True


def choose_port(application: Application) -> int:
    """The application's own port while it is free; else a free one of the range no other application holds.

    :raise DeployFailed: every port of the range is taken.
    """
    held = set(
        db.session.scalars(
            db.select(Application.port).where(Application.id != application.id, Application.port.is_not(None))
        )
    )
    if application.port and application.port not in held and _port_is_free(application.port):
        return application.port
    ports = current_app.config["SERVER_PORTS"]
    start = random.randrange(len(ports))  # two hosts sharing a database rarely try the same port first
    for port in itertools.chain(ports[start:], ports[:start]):
        if port not in held and _port_is_free(port):
            return port
    raise DeployFailed(
        f"No free port for the server in {ports.start}-{ports.stop - 1} (LLMAPP_SERVER_PORTS): "
        "stop an application, or widen the range."
    )


def _check_model(application: Application) -> None:
    """Before a process starts (and imports torch, seconds): a model directory that isn't there fails now."""
    model = registry.get_model(application.model_id)
    if model.engine == "transformers":
        try:
            model_detection.check_directory(model.source)
        except model_detection.NotAModel as e:
            raise DeployFailed(f"The model could not be loaded: {e}") from e


def _spawn(application: Application) -> psutil.Process:
    _check_model(application)
    port = choose_port(application)
    if application.port and port != application.port:
        log_event(
            application.id,
            f"port {application.port} is taken on {queues.this_host()}: the endpoint moves to port {port}",
            "WARNING",
        )
    try:  # before the server starts: it reads its plugin chain before it says it is ready
        plugins.publish_chain(application)
    except ValueError as e:
        raise DeployFailed(f"The plugin chain could not be prepared ({e}); enter the webhook's secret again.") from e
    user = server_user(application, port)
    spec_path = run_dir() / f"{application.id}.json"
    _spec(application, port).write(spec_path)
    output = os.open(run_dir() / f"{application.id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    spec_file = open(spec_path, "rb")  # noqa: SIM115 - the server reads it on its standard input
    try:
        # A session of its own: the server outlives this job, its worker, and a Ctrl-C of the worker.
        # `-I`: the interpreter ignores PYTHON* variables and the user's site-packages (so `-u` stands for
        # PYTHONUNBUFFERED: what it prints reaches its log file at once). The spec comes on
        # standard input, opened here: the server's account may not read the run folder.
        process = subprocess.Popen(
            [sys.executable, "-I", "-u", "-c", SERVER_LAUNCHER, "--spec", str(spec_path), "--spec-on-stdin"],
            cwd=ROOT,
            env=_environment(application, user),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=spec_file,
            start_new_session=True,
            **({"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}),
        )
    except (OSError, ValueError) as e:  # e.g. a variable the operating system refuses
        raise DeployFailed(f"The server process could not be started: {e}.") from e
    finally:
        os.close(output)
        spec_file.close()
    db.session.execute(
        db.update(Application)
        .where(Application.id == application.id)
        .values(process_host=queues.this_host(), process_pid=process.pid, process_port=port, port=port)
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


def health(application: Application, timeout: float = HEALTH_TIMEOUT_S) -> dict | None:
    return metrics.server_health(f"http://127.0.0.1:{application.process_port}", timeout)


def endpoint_url(application: Application) -> str:
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
                process = _spawn(application)
            _wait_ready(application, process)
        except DeployFailed as e:
            _fail_deploy(application, str(e))
            return f"failed: {e}"
        _set_phase(application, None)
        try:
            lifecycle.transition(application.id, "deployed", endpoint=endpoint_url(application), deployed_at=utcnow())
        except lifecycle.TransitionRefused:
            return "finished meanwhile by another job"
        publish_keys(application)
        log_event(
            application.id,
            f"deploy completed by the reconcile (its job had died): running at {endpoint_url(application)}"
            if resumed
            else f"running at {endpoint_url(application)}",
        )
        return "running"


def _fail_deploy(application: Application, reason: str) -> None:
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
    with queues.held_lock(connection, keyspace.lock("stop", application_id), LOCK_TTL_S) as held:
        if not held:
            return "another job is stopping this application"
        application = db.session.get(Application, uuid.UUID(str(application_id)))
        if application is None or application.status != lifecycle.STOPPING:
            return "not stopping: nothing to do"
        code = terminate(application, current_app.config["STOP_GRACE_S"])
        _stopped(application, f"stopped (exit code {code})" if code is not None else "stopped")
        return "stopped"


def _stopped(application: Application, message: str) -> None:
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
        queues.connection().delete(*keyspace.application_keys(application_id))
        metrics.delete_series(application_id)
        queues.delete_matching(queues.connection(), keyspace.playground_pattern(application_id))
    except redis.RedisError as e:  # the application is gone; what it left in Redis holds no secret
        current_app.logger.warning("after deleting application %s, Redis was unreachable: %s", application_id, e)


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
    )


# --- reconcile ----------------------------------------------------------------------------------


def _job_pending(job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=queues.connection(), serializer=queues.SERIALIZER)
        return job.get_status() in ("queued", "scheduled", "deferred")
    except NoSuchJobError:
        return False


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
            elif not connection.exists(keyspace.lock("stop", application.id)) and not _job_pending(
                f"stop-{application.deploy_id}"
            ):
                terminate(application, grace_s=0)
                _stopped(application, "stopped (repaired: its stop job had died)")
                summary["repaired"] += 1
        except lifecycle.TransitionRefused:
            continue  # a job moved it meanwhile: the next reconcile sees where it is
    return summary


def _reconcile_deploying(application: Application, connection) -> str:
    """A deploy whose job died: follow its server if one is alive (a job of this host's), else fail it."""
    deploy_id = application.deploy_id
    if connection.exists(keyspace.lock("deploy", application.id)) or any(
        _job_pending(f"{kind}-{deploy_id}") for kind in ("deploy", "resume")
    ):
        return "checked"
    if server_process(application) is None:
        _fail_deploy(application, "The deploy job stopped before finishing (its worker died). Deploy again.")
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


@dataclass(frozen=True)
class Silence:
    """What the reconcile remembers of a server that does not answer its health checks."""

    misses: int = 0  # checks unanswered while the process used no CPU
    cpu_s: float | None = None  # its CPU time at the last check
    busy_since: float | None = None  # since when it answers nothing while using CPU (wall-clock seconds)

    @classmethod
    def load(cls, fields: dict) -> "Silence":
        def number(name):
            return float(fields[name]) if fields.get(name) not in (None, b"", "") else None

        return cls(int(number(b"misses") or 0), number(b"cpu_s"), number(b"busy_since"))

    def dump(self) -> dict:
        return {k: "" if v is None else str(v) for k, v in self.__dict__.items()}


def judge_silence(previous: Silence, cpu_s: float, now: float) -> tuple[Silence, str | None]:
    """A server that did not answer its health check: is it dead (the reason) or busy (None)?

    A process that used CPU since the last check is working (a burst of long prompts, a slow
    machine): it is given BUSY_LIMIT_S. One that used none (stopped, deadlocked) is dead after
    SILENT_CHECKS checks.
    """
    if previous.cpu_s is not None and cpu_s > previous.cpu_s + 0.01:
        busy_since = previous.busy_since if previous.busy_since is not None else now
        if now - busy_since >= BUSY_LIMIT_S:
            return Silence(), f"the server answered no health check for {BUSY_LIMIT_S} s while busy (hung)"
        return Silence(0, cpu_s, busy_since), None
    misses = previous.misses + 1
    if misses >= SILENT_CHECKS:
        return Silence(), "the server stopped answering its health checks"
    return Silence(misses, cpu_s, None), None


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


@dataclass(frozen=True)
class RestartDecision:
    """What to do with a server that died or went silent: restart after ``delay_s``, or fail saying why."""

    restart: bool
    delay_s: float = 0
    error: str = ""


def decide_restart(reason: str, policy: str, max_restarts: int, restarts_used: int) -> RestartDecision:
    """The restart policy as a rule (pure): on-failure restarts after 1, 2, 4… s up to ``max_restarts``
    times; then, or with never, the application fails with the reason and the count."""
    if policy == "on-failure" and restarts_used < max_restarts:
        return RestartDecision(True, delay_s=2**restarts_used)
    said = f"{reason[0].upper()}{reason[1:]}"
    if policy == "on-failure":
        return RestartDecision(False, error=f"{said} after {restarts_used} restart{'s' if restarts_used != 1 else ''}.")
    return RestartDecision(False, error=f"{said} (restart policy: {policy}).")


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
                "sampled_at": _now_iso(),
            }
    except psutil.NoSuchProcess:
        return
    used = queues.connection().hgetall(keyspace.api_keys_used(application.id))
    for key_id, ts in used.items():
        db.session.execute(
            db.update(ApiKey)
            .where(ApiKey.id == int(key_id), ApiKey.application_id == application.id)
            .values(last_used_at=datetime.fromtimestamp(float(ts), UTC).replace(tzinfo=None))
        )
    db.session.execute(db.update(Application).where(Application.id == application.id).values(resource_usage=usage))
    db.session.commit()
    metrics.record_usage(application.id, usage["cpu_percent"], usage["rss_bytes"])
