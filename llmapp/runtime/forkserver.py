"""The fork server: app servers that start without importing torch and transformers each time.

A worker starts one (services/server_processes.py, ``start_fork_server``) with the environment every
app server starts with, minus what differs per server. It imports the engine's libraries and the server's
code once, then forks one child per request on its Unix socket; the child becomes the app server, as if
`python -I -u -c <launcher> --spec … --spec-on-stdin` had started it (its process title reads
`python -I -u -m llmapp.runtime --spec … --spec-on-stdin`), in a fraction of the time: a deploy no longer
waits 2-3 s of CPU for the imports.

What keeps it as safe as a cold start:
- The socket is the platform's alone (mode 600 in the run folder, which is 700), and a child serves only
  a peer of the fork server's own account (or root).
- The fork server never reads a request: it forks first and the child reads it. So no application's
  variables, secrets or spec are ever in the fork server's memory, hence never in another server's.
- The child takes a session of its own, drops to the server's account (groups, group, then user: no way
  back), takes the standard input and output it was sent, and the environment it was given, as
  Popen(user=…, start_new_session=True) does.
- What the libraries read from the environment while they are imported was read in the fork server. The
  child compares first: when a variable it was given differs from the fork server's and it is not one
  read later (a device list, a token) or applied here (the thread count), it says why and exits, and the
  worker starts the server cold (the command it always ran). So does a child whose title could not hold
  the whole command, or one forked after CUDA was initialised. The fork server runs no Python thread and
  computes nothing (a fork copies the locks other threads hold; OpenMP's pool would hang in a child); the
  native threads numpy's and torch's BLAS start at import stop and start again across a fork by themselves.
- A child serves only once its worker has its answer and says "go": a worker that gave up waiting (and
  started the server cold) never does, and the child ends; none serves unrecorded.
- Children are reaped as they exit; the fork server ends when its worker does (its pipe closes, or the
  worker's pidfd says it ended). The app servers, in sessions of their own, live on, as cold-started ones do.
What differs from a cold start, seen from outside: /proc/<pid>/environ of a forked server shows the fork
server's first environment (the kernel keeps that block; the server's own is in its memory, where getenv
reads it), and psutil splits its title into one string and empty ones (`ps` shows it whole).
Left as it is: every forked server shares the fork server's memory layout (address-space randomisation
happens once per fork server, not per server), its stack canary and pointer guard, and its hash seed: a
memory disclosure in one server tells those of all. LLMAPP_WARM_START=0 turns warm starts off.
"""

import argparse
import atexit
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from dataclasses import dataclass

from .plugins.published import CHAIN_KEY_VARIABLE
from .spec import REDIS_URL_VARIABLE

# Imported once, here: the libraries, the server's code, and what loading any model imports (transformers
# loads modeling_utils, and with it much of torch, only then: 1.8 s of a 2-core machine's time). What is
# left for the child is its architecture's own module and the weights.
PRELOADED = (
    "torch", "transformers", "transformers.modeling_utils", "transformers.modeling_layers",
    "transformers.generation.utils", "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto", "transformers.processing_utils",
    "llmapp.runtime.__main__", "llmapp.runtime.engines.transformers", "setproctitle",
)  # fmt: skip
# Variables that may differ between the fork server and a server without a cold start: set per server by
# the platform, read only when used (not at import), or applied by the child. HOME among them: the fork
# server starts with the home servers' own accounts have (none, or LLMAPP_SERVER_USER's), and a server
# that runs as the platform's account (its own could not read the model) then finds the libraries'
# caches and token under that home, not under root's: less than a cold start would reach, never more.
SET_PER_SERVER = frozenset({REDIS_URL_VARIABLE, CHAIN_KEY_VARIABLE, "HOME", "USER", "LOGNAME", "PYTHONUNBUFFERED"})
READ_WHEN_USED = frozenset(
    {
        "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
        "HF_TOKEN", "TOKENIZERS_PARALLELISM", "VLLM_API_KEY",
    }
)  # fmt: skip
# The engine sets it by default before it imports transformers (engines/transformers.py), as this does.
OFFLINE_DEFAULT = {"HF_HUB_OFFLINE": "1"}
THREADS_VARIABLE = "OMP_NUM_THREADS"  # read by OpenMP when torch loads; the child sets torch's threads itself
REQUEST_TIMEOUT_S = 10.0
MAX_REQUEST_BYTES = 8 << 20
_LENGTH = struct.Struct("!I")
GO = b"g"  # the worker's word that it records the child: only then does it serve


class Unavailable(Exception):
    """No fork server answered (none runs, or it went): start the server cold."""


class Refused(Exception):
    """The fork server's child could not become the server (the reason, for the user)."""


@dataclass(frozen=True)
class Started:
    pid: int
    warm: bool  # False: it must start cold (``why``); the child that said so has exited
    why: str = ""


# --- the client: a worker's deploy job asks for a server ---------------------------------------------


def start(socket_path: str, args: list[str], env: dict, user, stdin_fd: int, stdout_fd: int, cwd: str) -> Started:
    """Ask the fork server at ``socket_path`` for a server: ``args`` are the server's arguments, ``user``
    a ServerUser or None, ``stdin_fd``/``stdout_fd`` its standard input and output (sent, not inherited),
    ``cwd`` its folder. A ``Started`` that is not warm names no process: start it cold.

    :raise Unavailable: nobody answered. :raise Refused: the child could not become the server.
    """
    request = {
        "args": args,
        "env": env,
        "uid": user.uid if user else None,
        "gid": user.gid if user else None,
        "cwd": cwd,
    }
    body = json.dumps(request).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(REQUEST_TIMEOUT_S)
            connection.connect(socket_path)
            message = _LENGTH.pack(len(body)) + body
            sent = socket.send_fds(connection, [message[:65536]], [stdin_fd, stdout_fd])
            connection.sendall(message[sent:])
            answer = _read_line(connection)
            if not answer:
                raise Unavailable(f"the fork server at {socket_path} closed the connection")
            try:
                reply = json.loads(answer)
                started = None if "error" in reply else Started(int(reply["pid"]), bool(reply["warm"]), reply["why"])
            except (ValueError, KeyError, TypeError) as e:
                raise Unavailable(f"the fork server at {socket_path} answered {answer[:80]!r}") from e
            if started is not None and started.warm:
                connection.sendall(GO)  # it may serve: the caller records it
    except OSError as e:
        raise Unavailable(f"the fork server at {socket_path} did not answer ({e})") from e
    if started is None:
        raise Refused(reply["error"])
    return started


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.strip()


# --- the fork server ----------------------------------------------------------------------------------


def serve(socket_path: str, liveness_fd: int, worker_pid: int | None = None) -> None:
    """Preload, then fork a child per connection until ``liveness_fd`` (a pipe from the worker) closes or
    the worker (``worker_pid``, which started this process) ends."""
    for name, value in OFFLINE_DEFAULT.items():
        os.environ.setdefault(name, value)
    started_with = dict(os.environ)  # what a cold start starts with, before anything is imported
    for name in PRELOADED:
        __import__(name)
    # What the imports wrote into the environment themselves (torch: its compiler's cache folder, named
    # after the fork server's account) is not passed on: a child works it out again as its own account.
    import setproctitle  # its first title finds where the command line lies, which a child's new environment hides

    setproctitle.setproctitle(f"{sys.executable} -I -u -m llmapp.runtime.forkserver --socket {socket_path}")
    # A signal may reach any thread (BLAS has its own), leaving select() asleep: the wakeup pipe wakes it.
    woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # reaped in the loop, woken by the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the worker's terminal: the pipe tells us
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(16)
    parent = _watch(worker_pid)
    if worker_pid is not None and os.getppid() != worker_pid:
        return  # it went while this process was importing
    print(f"fork server {os.getpid()} ready on {socket_path}", file=sys.stderr, flush=True)
    try:
        while True:
            readable, _, _ = select.select([listener, liveness_fd, woken, *([parent] if parent else [])], [], [])
            if woken in readable:
                while _drained(woken):
                    pass
                _reap()
            if liveness_fd in readable and not os.read(liveness_fd, 1):
                return  # the worker went
            if parent is not None and parent in readable:
                return  # the worker went (killed: whatever it forked may still hold the pipe)
            if listener not in readable:
                continue
            try:
                connection, _ = listener.accept()
            except OSError as e:  # out of file descriptors, say: this request fails, the next may not
                print(f"fork server: accept failed: {e}", file=sys.stderr, flush=True)
                continue
            if threading.active_count() > 1:  # a fork would copy locks its threads hold: the client starts cold
                print("fork server: a thread appeared; servers start cold", file=sys.stderr, flush=True)
                connection.close()
                continue
            try:
                child = os.fork()
            except OSError as e:  # out of memory or processes: the client starts this one cold
                print(f"fork server: fork failed: {e}", file=sys.stderr, flush=True)
                child = None
            if child == 0:
                for fd in (woken, wake, *([parent] if parent else [])):
                    os.close(fd)
                _become_server(connection, listener, liveness_fd, started_with)  # never returns
            connection.close()
    finally:
        listener.close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)


def _watch(pid: int | None) -> int | None:
    """A descriptor that becomes readable when the worker ``pid`` ends (None where the system can't say):
    the pipe alone may outlive it, held open by what the worker forked."""
    try:
        return os.pidfd_open(pid) if pid is not None else None
    except (AttributeError, OSError):
        return None


def _drained(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _reap() -> None:
    """Every child that has exited, so none stays a zombie (the deploy and the stop watch them by pid)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --- the child ------------------------------------------------------------------------------------------


def _become_server(connection: socket.socket, listener: socket.socket, liveness_fd: int, started_with: dict):
    """In the forked child: read the request, become the server it describes (or its cold command), and
    exit as the interpreter would. Never returns to the fork server's loop."""
    code = 1
    try:
        listener.close()
        os.close(liveness_fd)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
        os.setsid()
        try:  # a peer that may not ask, or a request cut short: no answer (a worker would start it cold)
            _check_peer(connection)
            request = _receive(connection)
        except Exception as e:  # noqa: BLE001
            print(f"fork server: a request was refused: {e}", file=sys.stderr, flush=True)
            os._exit(1)
        try:
            why = cold_start_reason(request["env"], started_with) or _take_on(request)
        except Exception as e:  # noqa: BLE001 - what a cold start would hit too: the worker reports it
            _reply(connection, {"error": str(e) or type(e).__name__})
            os._exit(1)
        # Only a worker that will record this process may have it serve: it says "go" once it has the
        # answer; one that gave up waiting (and started the server cold) never does, and this child ends.
        if not _reply(connection, {"pid": os.getpid(), "warm": not why, "why": why}) or why:
            os._exit(0)
        try:
            go = connection.recv(1)
        except OSError:  # its worker gave up waiting
            go = b""
        if go != GO:
            os._exit(0)
        connection.close()
        _apply_threads()
        from llmapp.runtime.__main__ import main

        main(request["args"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
        traceback.print_exc()
    finally:
        _exit(code)


def _receive(connection: socket.socket) -> dict:
    connection.settimeout(REQUEST_TIMEOUT_S)
    data, fds, _, _ = socket.recv_fds(connection, 65536, 2)
    if len(fds) != 2:
        raise ValueError("the request must send the server's standard input and output")
    if len(data) < _LENGTH.size:
        raise ValueError("the request was cut short")
    (length,) = _LENGTH.unpack(data[: _LENGTH.size])
    if length > MAX_REQUEST_BYTES:
        raise ValueError(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    body = data[_LENGTH.size :]
    while len(body) < length:
        chunk = connection.recv(min(65536, length - len(body)))
        if not chunk:
            raise ValueError("the request was cut short")
        body += chunk
    request = json.loads(body)
    stdin_fd, stdout_fd = fds
    os.dup2(stdin_fd, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stdout_fd, 2)
    os.close(stdin_fd)
    os.close(stdout_fd)
    return request


def _check_peer(connection: socket.socket) -> None:
    """Only the fork server's own account (the worker's) or root may ask for a server."""
    _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid not in (0, os.getuid()):
        raise PermissionError(f"uid {uid} may not start servers")


def _take_on(request: dict) -> str:
    """Become the request's process: its account, folder, environment and title. Returns why it can't
    run warm after all ("" when it can)."""
    uid, gid = request["uid"], request["gid"]
    if uid is not None:  # groups, then group, then user: after setuid there is no way back
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
            raise PermissionError(f"could not switch to uid {uid}")
    os.chdir(request["cwd"])
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)  # ValueError for a NUL in a name or value
    # What it runs, as a command (its cold command's launcher is longer than the title may be).
    title = " ".join([sys.executable, "-I", "-u", "-m", "llmapp.runtime", *request["args"]])
    import setproctitle

    setproctitle.setproctitle(title)
    if _own_command_line() != title:  # the fork server's title area is too short for this one
        return "its command line is longer than the fork server's"
    return ""


def cold_start_reason(env: dict, started_with: dict) -> str:
    """Why a server with environment ``env`` can't run in a child of a fork server started with
    ``started_with`` ("" when it can)."""
    import torch

    if getattr(torch.cuda, "_is_in_bad_fork", lambda: False)():
        return "CUDA was initialised in the fork server"
    later, env = SET_PER_SERVER | READ_WHEN_USED | {THREADS_VARIABLE}, {**OFFLINE_DEFAULT, **env}
    differs = sorted(n for n in set(env) | set(started_with) if n not in later and env.get(n) != started_with.get(n))
    if differs:
        return f"{', '.join(differs)} may be read while torch and transformers load"
    threads = env.get(THREADS_VARIABLE)
    if threads is not None and threads != started_with.get(THREADS_VARIABLE) and not threads.isdigit():
        return f"{THREADS_VARIABLE} is not a number of threads"
    return ""


def _apply_threads() -> None:
    """OpenMP read the fork server's thread count when torch loaded: set the server's own."""
    threads = os.environ.get(THREADS_VARIABLE, "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))


def _own_command_line() -> str:
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().rstrip(b"\0").decode(errors="replace")


def _reply(connection: socket.socket, reply: dict) -> bool:
    try:
        connection.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        return False
    return True


def _exit(code: int) -> None:
    """End the child as the interpreter ends: join its threads, run what was registered at exit, flush."""
    try:
        threading._shutdown()  # noqa: SLF001 - what the interpreter itself calls before exiting
        atexit._run_exitfuncs()  # noqa: SLF001
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="The fork server a worker starts (llmapp/runtime/forkserver.py).")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--liveness-fd", type=int, required=True)
    parser.add_argument("--worker-pid", type=int)
    args = parser.parse_args(argv)
    serve(args.socket, args.liveness_fd, args.worker_pid)


if __name__ == "__main__":
    main()
