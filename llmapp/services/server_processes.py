"""A replica's server process on this host: its port, its run folder, its account, its environment,
and spawning, finding and terminating it (orphans too). The deploy (deployments.py) and the reconcile
(reconcile.py) call these; what the server is told is server_spec.py's, from the release it serves.
"""

import itertools
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from flask import current_app
from sqlalchemy.orm.exc import StaleDataError

from .. import ROOT, engines, queues, secrets_box
from ..extensions import db
from ..models import Application, Replica
from ..runtime import forkserver
from ..runtime.plugins.published import CHAIN_KEY_VARIABLE
from ..runtime.spec import REDIS_URL_VARIABLE
from . import NotFound, environment, metrics, plugins, registry
from .platform_log import log_event
from .server_spec import ServingSetup, spec_for

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
NO_HOME = "/nonexistent"
NOGROUP_GID = 65534  # the group of servers' own accounts (Debian's nogroup): it owns nothing either
# How a server starts under `python -I` (no current folder on sys.path): the project's root is put first.
SERVER_LAUNCHER = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from llmapp.runtime.__main__ import main; main()"
FORK_SERVER_LAUNCHER = (
    f"import sys; sys.path.insert(0, {str(ROOT)!r}); from llmapp.runtime.forkserver import main; main()"
)
FORK_SERVER_WAIT_S = 30.0  # for a fork server still importing torch (about what a cold start spends on it)
MAX_SOCKET_PATH = 100  # a Unix socket's path is at most 107 bytes
HEALTH_TIMEOUT_S = 2.0


class DeployFailed(Exception):
    """Why a deploy failed, in words for the user."""


class Superseded(DeployFailed):
    """The deploy was ended meanwhile (a stop, a restart, the reconcile): what it started goes, nothing
    else is changed (whoever ended it settled the application)."""


def inherited_environment(home: str | None = None) -> dict:
    """What every server starts with of the worker's environment: the allow-list (INHERITED_ENV,
    LLMAPP_SERVER_ENV_ALLOW, LC_*); ``home``: the server account's home folder."""
    allowed = INHERITED_ENV | set(current_app.config["SERVER_ENV_ALLOW"])
    env = {k: v for k, v in os.environ.items() if k in allowed or k.startswith("LC_")}
    if home is not None:
        env["HOME"] = home
    env["PYTHONUNBUFFERED"] = "1"
    return env


def server_environment(application: Application, setup: ServingSetup, user: "ServerUser | None") -> dict:
    """The server's environment: an allow-list of the worker's, the release's own variables, where
    Redis is. A variable of a kind members may not set (stored before the rule existed) fails the deploy."""
    env = inherited_environment()
    for name, value, secret in setup.env:
        if why := environment.refusal(name):
            raise DeployFailed(f"{why} Remove it from the application's environment variables.")
        try:
            env[name] = secrets_box.decrypt(value) if secret else value
        except ValueError as e:
            raise DeployFailed(f"The secret {name} could not be decrypted ({e}); enter it again.") from e
    if user is not None:  # nothing of root's home or temporary files
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env[REDIS_URL_VARIABLE] = current_app.config["REDIS_URL"]
    env[CHAIN_KEY_VARIABLE] = secrets_box.application_key(application.id).decode()
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


def server_user(application: Application, setup: ServingSetup, port: int) -> ServerUser | None:
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
        user = ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, account_home(entry))
    else:
        uid = current_app.config["SERVER_UID_BASE"] + current_app.config["SERVER_PORTS"].index(port)
        user = ServerUser(f"llmapp-server-{uid}", uid, NOGROUP_GID, NO_HOME)
    unreadable = next((path for path in paths_to_read(setup) if not user.can_read(path)), None)
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


def account_home(entry) -> str:
    """A server account's home folder (none for an account whose home is the root or unset)."""
    return NO_HOME if entry.pw_dir in ("", "/") else entry.pw_dir


def paths_to_read(setup: ServingSetup) -> list[Path]:
    """What a server must read: the interpreter and its standard library, the packages, the code, and
    what its engine reads (the model).

    :raise DeployFailed: the engine's files can't even be listed.
    """
    paths = sysconfig.get_paths()
    needed = [Path(sys.executable), Path(paths["stdlib"]), Path(paths["purelib"]), Path(ROOT) / "llmapp"]
    model = model_of(setup)
    try:
        return needed + engines.kind(model.engine).paths_to_read(model)
    except engines.NotReady as e:
        raise DeployFailed(str(e)) from e


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
    """The application's own port while it is free; else a free one of the range that no other
    application keeps and no replica holds.

    :raise DeployFailed: every port of the range is taken.
    """
    held = set(
        db.session.scalars(
            db.select(Application.port).where(Application.id != application.id, Application.port.is_not(None))
        )
    ) | set(db.session.scalars(db.select(Replica.port).where(Replica.port.is_not(None))))
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


def model_of(setup: ServingSetup):
    try:
        return registry.get_model(setup.model_id)
    except NotFound as e:
        raise DeployFailed(f"Release {setup.release}'s model is no longer in the registry.") from e


def preflight(setup: ServingSetup) -> None:
    """Before a process starts (and imports its engine, seconds): a model that can't be served fails now.

    :raise DeployFailed: with the engine's reason.
    """
    model = model_of(setup)
    try:
        engines.kind(model.engine).preflight(model)
    except engines.NotReady as e:
        raise DeployFailed(str(e)) from e


def spawn(application: Application, replica: Replica, setup: ServingSetup) -> psutil.Process:
    """Start one replica's server (its port, chain, account, spec, environment) serving ``setup``;
    record where it runs on its row.

    :raise DeployFailed: why it could not be started.
    """
    preflight(setup)
    port = choose_port(application)
    if application.port and port != application.port and len(application.replicas) == 1:
        log_event(
            application.id,
            f"port {application.port} is taken on {queues.this_host()}: the endpoint moves to port {port}",
            "WARNING",
        )
    try:  # before the server starts: it reads its plugin chain before it says it is ready
        plugins.publish_chain(application)
    except ValueError as e:
        raise DeployFailed(f"The plugin chain could not be prepared ({e}); enter the webhook's secret again.") from e
    user = server_user(application, setup, port)
    spec_path = run_dir() / f"{application.id}.{replica.id}.json"
    spec_for(application, port, setup).write(spec_path)
    output = os.open(run_dir() / f"{application.id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    spec_file = open(spec_path, "rb")  # noqa: SIM115 - the server reads it on its standard input
    # `-I`: the interpreter ignores PYTHON* variables and the user's site-packages (so `-u` stands for
    # PYTHONUNBUFFERED: what it prints reaches its log file at once). The spec comes on standard input,
    # opened here: the server's account may not read the run folder.
    args = ["--spec", str(spec_path), "--spec-on-stdin"]
    try:
        pid, how = start_process(
            [sys.executable, "-I", "-u", "-c", SERVER_LAUNCHER, *args],
            args,
            server_environment(application, setup, user),
            user,
            spec_file.fileno(),
            output,
        )
    finally:
        os.close(output)
        spec_file.close()
    replica.host, replica.pid, replica.port = queues.this_host(), pid, port
    replica.address = current_app.config["ADVERTISE_HOST"]
    if len(application.replicas) == 1:
        application.port = port  # its only server's: the port its endpoint keeps from now on
    try:
        db.session.commit()
    except StaleDataError as e:  # its row went meanwhile (a stop): the server it would have recorded goes too
        db.session.rollback()
        kill_orphan(pid, str(application.id))
        raise Superseded("the deploy was ended while its server started") from e
    log_event(
        application.id,
        f"server process {pid} started on {queues.this_host()}:{port} (release {setup.release}; {how})",
    )
    return psutil.Process(pid)


def start_process(argv: list[str], args: list[str], env: dict, user: ServerUser | None, stdin: int, stdout: int):
    """Start a server: forked by this worker's fork server when there is one (warm), else as ``argv``, a
    Python of its own, in a session of its own (it outlives this job, its worker, and a Ctrl-C of the
    worker). Returns its pid and how it started, in words.

    :raise DeployFailed: it could not be started.
    """
    how = "started cold" if current_app.config["WARM_START"] else "started cold (warm starts are off)"
    if socket_path := fork_server_socket():
        try:
            started = forkserver.start(socket_path, args, env, user, stdin, stdout, cwd=str(ROOT))
        except forkserver.Unavailable as e:
            current_app.logger.warning("%s: the server starts cold", e)
        except forkserver.Refused as e:
            raise DeployFailed(f"The server process could not be started: {e}.") from e
        else:
            if started.warm:
                return started.pid, "forked by the host's fork server"
            how = f"started cold: {started.why}"
    try:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            start_new_session=True,
            **({"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}),
        )
    except (OSError, ValueError) as e:  # e.g. a variable the operating system refuses
        raise DeployFailed(f"The server process could not be started: {e}.") from e
    return process.pid, how


# --- the fork server (llmapp/runtime/forkserver.py) ---------------------------------------------------


def fork_server_socket() -> str | None:
    """Where this worker's fork server listens, once it does (None: warm starts are off, or it is gone)."""
    config = current_app.config
    path = config["FORK_SERVER_SOCKET"]
    if not config["WARM_START"] or not path:
        return None
    deadline = time.monotonic() + FORK_SERVER_WAIT_S
    while not os.path.exists(path):  # still importing: waiting costs less than importing again
        if time.monotonic() > deadline or not _alive(config.get("FORK_SERVER_PID")):
            return None
        time.sleep(0.05)
    return path


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its worker, does not; None: not ours to
    watch, a fork server named by the configuration)."""
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_fork_server() -> subprocess.Popen | None:
    """This worker's fork server, unless warm starts are off or the configuration names one running
    already; the worker's jobs find it in the configuration. It ends when this process does."""
    config = current_app.config
    if not config["WARM_START"] or config["FORK_SERVER_SOCKET"]:
        return None
    path = run_dir() / f"forkserver.{os.getpid()}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix="llmapp-fork-")) / "socket"  # the platform's user's only (700)
    process = launch_fork_server(path)
    config["FORK_SERVER_SOCKET"], config["FORK_SERVER_PID"] = str(path), process.pid
    return process


def launch_fork_server(path: Path) -> subprocess.Popen:
    """Start a fork server listening at ``path``, with the environment servers inherit (the account's
    home as a server's: what the libraries read while they are imported). Closing the process's
    ``liveness_fd`` (or the end of this process) ends it."""
    home = None
    if os.geteuid() == 0:
        try:
            configured = current_app.config["SERVER_USER"]
            home = account_home(pwd.getpwnam(configured)) if configured else NO_HOME
        except KeyError:
            home = NO_HOME
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-u", "-c", FORK_SERVER_LAUNCHER, "--socket", str(path)]
            + ["--liveness-fd", str(read_end), "--worker-pid", str(os.getpid())],
            cwd=ROOT,
            env=inherited_environment(home),
            stdin=subprocess.DEVNULL,
            pass_fds=(read_end,),
            start_new_session=True,  # not in the worker's terminal group: it ends when its pipe closes
        )
    finally:
        os.close(read_end)
    process.liveness_fd = write_end
    return process


def stop_fork_server(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    os.close(process.liveness_fd)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
    path = Path(current_app.config["FORK_SERVER_SOCKET"])
    if path.parent.name.startswith("llmapp-fork-"):  # the folder made for a run folder's path too long
        shutil.rmtree(path.parent, ignore_errors=True)


def server_process(replica: Replica) -> psutil.Process | None:
    """The replica's server process, if it runs on this host and is alive."""
    if not replica.pid or replica.host != queues.this_host():
        return None
    try:
        process = psutil.Process(replica.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            process.wait(0)
            return None
        if str(replica.application_id) not in " ".join(process.cmdline()):  # not a reused pid
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.TimeoutExpired):
        return None


def health(replica: Replica, timeout: float = HEALTH_TIMEOUT_S) -> dict | None:
    """A replica of this host, asked where it listens: the bind address, or loopback when it listens on
    every address (a server bound to one address, as on a host of several, is not on 127.0.0.1)."""
    bind = current_app.config["BIND_HOST"]
    local = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind
    return metrics.server_health(f"http://{'[' + local + ']' if ':' in local else local}:{replica.port}", timeout)


def terminate(replicas: list[Replica], grace_s: float) -> dict[str, int | None]:
    """SIGTERM each replica's server at once (each drains its in-flight requests), SIGKILL one still
    there after ``grace_s``. Returns each one's exit code, by replica id."""
    signalled = {}
    for replica in replicas:
        process = server_process(replica)
        if process is None:
            continue
        try:
            os.killpg(process.pid, signal.SIGTERM)
            signalled[replica.id] = (replica, process)
        except (ProcessLookupError, PermissionError):
            continue
    codes: dict[str, int | None] = {replica.id: None for replica in replicas}
    deadline = time.monotonic() + grace_s + 2  # they drain side by side
    for replica_id, (replica, process) in signalled.items():
        try:
            try:
                codes[replica_id] = process.wait(max(0.1, deadline - time.monotonic()))
            except psutil.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                log_event(
                    replica.application_id, f"server {process.pid} did not stop within {grace_s:g} s: killed", "WARNING"
                )
                codes[replica_id] = process.wait(5)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.TimeoutExpired):
            continue
    return codes


def kill_orphan(pid: int, application_id: str) -> None:
    try:
        process = psutil.Process(pid)
        if str(application_id) in " ".join(process.cmdline()):
            os.killpg(pid, signal.SIGKILL)
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass
