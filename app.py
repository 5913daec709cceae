"""Run the whole platform on the embedded default: `python app.py`.

SQLite under instance/, a real Redis server it starts itself when REDIS_URL is not set, migrations
applied, RQ workers, the web server (gunicorn) and the gateway started and kept running: a process that dies (the
embedded Redis too, on its port, with the data it saved) is started again (with back-off). Only Ctrl-C
(or SIGTERM) stops everything it started, within STOP_S plus the app servers' own stop.
`flask` commands run in this folder use the same configuration (they find create_app below).
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil

import llmapp
from llmapp import config as llmapp_config

RESTART_DELAYS_S = (1, 2, 4, 8, 16, 30)  # after each death in a row; a process up for a minute starts over
STEADY_S = 60
# What the workers and the web server get to stop, all together, before they are killed. The web server
# ends its live log streams at once and gives other requests less than this (gunicorn.conf.py).
STOP_S = 12


def create_app():
    """The platform as `python app.py` and `flask` run it: development settings unless LLMAPP_ENV says otherwise."""
    return llmapp.create_app({"LLMAPP_ENV": os.environ.get("LLMAPP_ENV", llmapp_config.DEVELOPMENT)})


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM and SIGHUP stop everything, like Ctrl-C


class Supervised:
    """Something the platform needs running, started again with back-off whenever it dies. Subclasses
    say how it starts (returning its pid), whether it ended, and what to clear after a death."""

    def __init__(self, name: str):
        self.name = name
        self.pid: int | None = None
        self.started_at = 0.0
        self.deaths_in_a_row = 0
        self.restart_at: float | None = None

    def launch(self) -> int:
        raise NotImplementedError

    def ended(self) -> str | None:
        """None while it runs, else how it ended ("exited with code -9")."""
        raise NotImplementedError

    def clear(self) -> None:
        """What a death leaves behind."""

    def start(self) -> None:
        self.pid = self.launch()
        self.started_at, self.restart_at = time.monotonic(), None

    def _back_off(self, now: float, what: str) -> None:
        delay = RESTART_DELAYS_S[min(self.deaths_in_a_row, len(RESTART_DELAYS_S) - 1)]
        self.deaths_in_a_row += 1
        self.restart_at = now + delay
        print(f"The {self.name} {what}; restarting it in {delay} s.", file=sys.stderr, flush=True)

    def check(self) -> None:
        """Notice a death (and say so), or restart once its back-off has passed."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                try:
                    self.start()
                except Exception as e:  # noqa: BLE001 - e.g. its port is taken for now: try again later
                    self._back_off(now, f"could not start ({e})")
                    return
                print(f"Restarted the {self.name} (pid {self.pid}).", file=sys.stderr, flush=True)
            return
        how = self.ended()
        if how is None:
            if now - self.started_at >= STEADY_S:
                self.deaths_in_a_row = 0
            return
        self.clear()
        self._back_off(now, f"(pid {self.pid}) {how}")


class Child(Supervised):
    """A platform process (worker or web server)."""

    def __init__(self, name: str, args: list[str], env: dict):
        super().__init__(name)
        self.args, self.env = args, env
        self.process: subprocess.Popen | None = None

    def launch(self) -> int:
        # A process group of its own: when it dies, what it forked (rq's scheduler and work horse) is
        # stopped with it. An orphaned scheduler would keep the dead worker's Redis connection open,
        # and Redis would go on handing queued jobs to that connection, where nobody reads them.
        self.process = subprocess.Popen(
            [sys.executable, *self.args], cwd=llmapp.ROOT, env=self.env, start_new_session=True
        )
        return self.process.pid

    def ended(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"exited with code {code}"

    def clear(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its leftovers (app servers have sessions of their own)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Until it exited, or ``deadline`` (monotonic) has passed: then it is killed, with what it started."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"The {self.name} did not stop in time; killing it.", file=sys.stderr, flush=True)
            with contextlib.suppress(psutil.Error):
                for process in [*psutil.Process(self.process.pid).children(recursive=True), self.process]:
                    with contextlib.suppress(psutil.Error, ProcessLookupError):
                        process.kill()  # gunicorn's workers too, not only its master
            self.process.wait()


class RedisServer(Supervised):
    """The embedded Redis. It comes back on the same port (the URL every process holds stays right)
    with the data it last saved; the workers, the web server and the app servers reconnect by themselves."""

    def __init__(self, embedded):
        super().__init__("embedded Redis")
        self.embedded = embedded
        self.port: int | None = None

    def launch(self) -> int:
        url = self.embedded.start(port=self.port)
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        return self.embedded.pid

    def ended(self) -> str | None:
        return None if self.embedded.alive() else "exited"

    def clear(self) -> None:
        self.embedded.forget()


def _answers(url: str) -> bool:
    """Whether a web server answers ``url`` with anything at all (an error page counts)."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def main() -> None:
    from llmapp.embedded import EmbeddedRedis
    from llmapp.services import bootstrap, stops

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    host = os.environ.get("LLMAPP_HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    instance = os.environ.get("LLMAPP_INSTANCE_PATH") or os.path.join(llmapp.ROOT, "instance")
    embedded = app = None
    supervised: list[Supervised] = []
    children: list[Child] = []
    try:
        if not os.environ.get("REDIS_URL"):
            embedded = EmbeddedRedis(instance)
            redis_server = RedisServer(embedded)
            redis_server.start()
            supervised.append(redis_server)
            os.environ["REDIS_URL"] = embedded.url
            print(f"Embedded Redis at {embedded.url}")
        app = create_app()
        with app.app_context():
            lines = bootstrap.prepare()
        env = dict(os.environ, LLMAPP_ENV=app.config["LLMAPP_ENV"])
        env.setdefault("LLMAPP_WORKER_LOG_LEVEL", "WARNING")  # not three lines for every reconcile
        # gevent: each open live log pane is a greenlet, not a thread (numbers in the README, Production).
        # Its config: a stopping worker ends its live log streams at once (see STOP_S).
        config = os.path.join(llmapp.ROOT, "gunicorn.conf.py")
        gunicorn = ["-m", "gunicorn", "--config", config, "--bind", f"{host}:{port}"]
        gunicorn += ["--worker-class", "gevent", "--workers", "2", "--worker-connections", "1000"]
        gunicorn += ["--access-logfile", "-", "app:create_app()"]
        # Two workers: a long deploy on one leaves the other free for stops and the reconcile.
        children = [Child(f"worker {n}", ["-m", "jobs.worker"], env) for n in (1, 2)]
        children.append(Child("web server", gunicorn, env))
        # The one OpenAI-compatible base URL in front of every application (llmapp/gateway/).
        gateway_port = str(app.config["GATEWAY_PORT"])
        children.append(Child("gateway", ["-m", "llmapp.gateway", "--host", host, "--port", gateway_port], env))
        for child in children:
            child.start()
        supervised += children
        # Ready is when the web server answers (gunicorn and its workers take seconds to import the app).
        waiting_since, said_slow = time.monotonic(), False
        while not _answers(f"http://{host}:{port}/login"):
            for each in supervised:
                each.check()
            if not said_slow and time.monotonic() - waiting_since > 60:
                print(f"Still waiting for the web server to answer on {host}:{port} (its messages are above)…")
                said_slow = True
            time.sleep(0.2)
        print(f"\n  llmapp is running at http://{host}:{port}/")
        print(f"  Its gateway (OpenAI-compatible, every application): http://{host}:{gateway_port}/v1")
        for line in lines:
            print(f"  {line}")
        print("  Press Ctrl-C to stop.\n", flush=True)
        while True:
            for each in supervised:  # Redis first: what the others need
                each.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
    finally:
        # Another Ctrl-C or SIGTERM must not cut this short: the app servers would be left running.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        for child in children:
            child.stop()
        deadline = time.monotonic() + STOP_S  # one deadline for all: a slow one does not delay the rest
        for child in children:
            child.wait(deadline)
        try:
            if app is not None and children:
                with app.app_context():  # the servers it started go too, recorded as stopped
                    if stopped := stops.shutdown_host("the platform was shut down"):
                        print(f"Stopped {stopped} application server(s).")
        finally:
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    main()
