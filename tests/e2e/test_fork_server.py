"""The fork server (llmapp/runtime/forkserver.py): servers forked warm, as their own account and session,
with only what they were sent; the fork server holds no application's secret and ends with its worker."""

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from conftest import gone, log_text, running_app, wait_for
from llmapp.runtime import forkserver
from llmapp.services import server_processes
from llmapp.services.server_processes import NOGROUP_GID, ServerUser


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the process's writable memory (heap, stacks, anonymous maps)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            address, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(part, 16) for part in address.split("-"))
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    return True
            except OSError:  # a region that went, or can't be read
                continue
    return False


def test_a_deployed_server_is_forked_warm_and_the_fork_server_never_holds_its_secrets(
    app, client, auth, member, factory, tiny, workers, fork_server
):
    workers.start()
    secret = "hf_forked-secret-7d1c0f"
    deployed, api, _ = running_app(
        app, client, auth, member, factory, tiny, "forked",
        env=[{"name": "HF_TOKEN", "value": secret, "secret": True}, {"name": "OMP_NUM_THREADS", "value": "1"}],
    )  # fmt: skip
    assert "forked by the host's fork server" in log_text(app, deployed.id)
    server = psutil.Process(deployed.process_pid)
    assert server.ppid() == fork_server.pid and os.getsid(server.pid) == server.pid
    command = " ".join(server.cmdline())
    assert "-I -u -m llmapp.runtime --spec" in command and str(deployed.id) in command
    # Its environment is the one it was given (in its memory, where getenv reads it; /proc/<pid>/environ
    # keeps the fork server's first one).
    assert memory_holds(server.pid, f"HF_TOKEN={secret}\0".encode())
    assert memory_holds(server.pid, b"OMP_NUM_THREADS=1\0")
    # It serves, with the sampling it was asked for.
    text = api.completions.create(model="forked", prompt="hello", max_tokens=4, temperature=0).choices[0].text
    assert isinstance(text, str)
    # The fork server never read the request: the secret is in the server's memory, not in the fork
    # server's (the control shows the scan finds it where it is).
    assert memory_holds(server.pid, secret.encode())
    assert not memory_holds(fork_server.pid, secret.encode())


def test_a_forked_child_takes_what_it_is_sent_and_outlives_its_fork_server(app, tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="llmapp-fork-"))
    path = folder / "socket"
    with app.app_context():
        process = server_processes.launch_fork_server(path)
        sent = {**server_processes.inherited_environment(), "LLMAPP_REDIS_URL": "redis://nowhere", "HF_TOKEN": "hf_t"}
    liveness_open = True
    try:
        wait_for(lambda: path.exists() or process.poll() is not None, 180, 0.1, "the fork server to listen")
        spec_read, spec_write = os.pipe()  # the child waits for its spec until this closes
        # A variable the libraries may read while they load, that the fork server loaded without: cold.
        refused = forkserver.start(str(path), ["--help"], {**sent, "EXTRA": "x"}, None, spec_read, 2, cwd="/")
        assert not refused.warm and refused.why == "EXTRA may be read while torch and transformers load"
        output = tmp_path / "out.log"
        with open(output, "wb") as out:
            user = ServerUser("llmapp-server-test", 200999, NOGROUP_GID, "/nonexistent") if os.geteuid() == 0 else None
            started = forkserver.start(
                str(path), ["--spec", "held.json", "--spec-on-stdin"], sent, user, spec_read, out.fileno(), cwd="/"
            )
        os.close(spec_read)
        assert started.warm, started.why
        child = psutil.Process(started.pid)
        assert child.ppid() == process.pid and os.getsid(child.pid) == child.pid and child.cwd() == "/"
        assert " ".join(child.cmdline()).rstrip().endswith("-I -u -m llmapp.runtime --spec held.json --spec-on-stdin")
        assert all(memory_holds(child.pid, f"{name}={value}\0".encode()) for name, value in sent.items())
        if user:  # as root: the account it was sent, in no group but its own
            assert child.uids().real == child.uids().effective == 200999
            assert child.gids().real == NOGROUP_GID and child.gids().effective == NOGROUP_GID
            status = Path(f"/proc/{child.pid}/status").read_text()
            assert next(line for line in status.splitlines() if line.startswith("Groups:")).split() == ["Groups:"]
        # The worker goes (its end of the pipe closes): the fork server ends, its socket with it; the
        # server it forked lives on.
        os.close(process.liveness_fd)
        liveness_open = False
        process.wait(60)
        assert not path.exists() and child.is_running()
        # It read its spec from the standard input it was sent, and wrote to the output it was sent.
        os.write(spec_write, json.dumps({"not": "a spec"}).encode())
        os.close(spec_write)
        wait_for(lambda: gone(child), 60, 0.1, "the child to exit")
        assert "Traceback" in output.read_text()
    finally:
        if liveness_open:
            os.close(process.liveness_fd)
            process.wait(60)
        shutil.rmtree(folder, ignore_errors=True)


def raw_request(path: Path, args: list[str], env: dict, stdin: int, stdout: int) -> tuple[socket.socket, dict]:
    """A request as a worker sends one (llmapp/runtime/forkserver.py), and the child's answer, the
    connection left open: what a worker does next (say "go", or not) is the test's."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(60)
    connection.connect(str(path))
    body = json.dumps({"args": args, "env": env, "uid": None, "gid": None, "cwd": "/"}).encode()
    socket.send_fds(connection, [struct.pack("!I", len(body)) + body], [stdin, stdout])
    answer = b""
    while not answer.endswith(b"\n"):
        answer += connection.recv(4096)
    return connection, json.loads(answer)


def test_a_child_whose_worker_gave_up_on_it_never_serves(app, tmp_path):
    """A worker that timed out waiting (and started the server cold) never says "go": the forked child
    ends instead of serving beside the cold one."""
    folder = Path(tempfile.mkdtemp(prefix="llmapp-fork-"))
    path = folder / "socket"
    with app.app_context():
        process = server_processes.launch_fork_server(path)
        env = {**server_processes.inherited_environment(), "HF_TOKEN": "hf_t"}
    try:
        wait_for(lambda: path.exists() or process.poll() is not None, 180, 0.1, "the fork server to listen")
        spec_read, spec_write = os.pipe()
        connection, answer = raw_request(path, ["--spec", "held.json", "--spec-on-stdin"], env, spec_read, 2)
        assert answer["warm"], answer
        child = psutil.Process(answer["pid"])
        connection.close()  # gave up: no "go"
        wait_for(lambda: gone(child), 60, 0.1, "the child to end without serving")
        os.close(spec_read)
        os.close(spec_write)
    finally:
        os.close(process.liveness_fd)
        process.wait(60)
        shutil.rmtree(folder, ignore_errors=True)


KILLED_WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from llmapp import create_app
from llmapp.services import server_processes
app = create_app({{"LLMAPP_ENV": "testing", "SECRET_KEY": "x", "SQLALCHEMY_DATABASE_URI": "sqlite://"}})
with app.app_context():
    process = server_processes.launch_fork_server({path!r})
if os.fork() == 0:  # what a worker forks (rq's scheduler, a work horse) holds the pipe too
    time.sleep(600)
    os._exit(0)
print(process.pid, flush=True)
time.sleep(600)
"""


def test_a_fork_server_ends_when_its_worker_is_killed_though_its_pipe_is_held(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="llmapp-fork-"))
    path = folder / "socket"
    script = KILLED_WORKER.format(root=str(Path(__file__).resolve().parents[2]), path=str(path))
    env = {**os.environ, "LLMAPP_INSTANCE_PATH": str(tmp_path / "instance")}
    worker = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    try:
        fork_server = psutil.Process(int(worker.stdout.readline()))
        wait_for(lambda: path.exists() or gone(fork_server), 180, 0.1, "the fork server to listen")
        assert not gone(fork_server)
        worker.kill()  # as the OOM killer would: its forked child lives on, holding the pipe's write end
        worker.wait(30)
        wait_for(lambda: gone(fork_server), 60, 0.1, "the fork server to end with its worker")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
