"""Run the whole platform on the embedded default: `python app.py`.

SQLite under instance/, a real Redis server it starts itself when REDIS_URL is not set, migrations
applied, RQ workers and the web server (gunicorn) started and kept running: a process that dies is
started again (with back-off). Only Ctrl-C (or SIGTERM) stops everything it started.
`flask` commands run in this folder use the same configuration (they find create_app below).
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

import llmapp
from llmapp import config as llmapp_config

RESTART_DELAYS_S = (1, 2, 4, 8, 16, 30)  # after each death in a row; a process up for a minute starts over
STEADY_S = 60


def create_app():
    """The platform as `python app.py` and `flask` run it: development settings unless LLMAPP_ENV says otherwise."""
    return llmapp.create_app({"LLMAPP_ENV": os.environ.get("LLMAPP_ENV", llmapp_config.DEVELOPMENT)})


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM and SIGHUP stop everything, like Ctrl-C


class Supervised:
    """A platform process (worker or web server), started again with back-off whenever it dies."""

    def __init__(self, name: str, args: list[str], env: dict):
        self.name, self.args, self.env = name, args, env
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.deaths_in_a_row = 0
        self.restart_at: float | None = None

    def start(self) -> None:
        # A process group of its own: when it dies, what it forked (rq's scheduler and work horse) is
        # stopped with it. An orphaned scheduler would keep the dead worker's Redis connection open,
        # and Redis would go on handing queued jobs to that connection, where nobody reads them.
        self.process = subprocess.Popen(
            [sys.executable, *self.args], cwd=llmapp.ROOT, env=self.env, start_new_session=True
        )
        self.started_at, self.restart_at = time.monotonic(), None

    def check(self) -> None:
        """Notice a death (and say so), or restart once its back-off has passed."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
                print(f"Restarted the {self.name} (pid {self.process.pid}).", file=sys.stderr, flush=True)
            return
        code = self.process.poll()
        if code is None:
            if now - self.started_at >= STEADY_S:
                self.deaths_in_a_row = 0
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its leftovers (app servers have sessions of their own)
        delay = RESTART_DELAYS_S[min(self.deaths_in_a_row, len(RESTART_DELAYS_S) - 1)]
        self.deaths_in_a_row += 1
        self.restart_at = now + delay
        print(
            f"The {self.name} (pid {self.process.pid}) exited with code {code}; restarting it in {delay} s.",
            file=sys.stderr,
            flush=True,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for process in [*psutil.Process(self.process.pid).children(recursive=True), self.process]:
                process.kill()  # gunicorn's workers too, not only its master


def main() -> None:
    from llmapp.embedded import EmbeddedRedis
    from llmapp.services import bootstrap, deployments

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    host = os.environ.get("LLMAPP_HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    instance = os.environ.get("LLMAPP_INSTANCE_PATH") or os.path.join(llmapp.ROOT, "instance")
    embedded = app = None
    children: list[Supervised] = []
    try:
        if not os.environ.get("REDIS_URL"):
            embedded = EmbeddedRedis(instance)
            os.environ["REDIS_URL"] = embedded.start()
            print(f"Embedded Redis at {embedded.url}")
        app = create_app()
        with app.app_context():
            lines = bootstrap.prepare()
        env = dict(os.environ, LLMAPP_ENV=app.config["LLMAPP_ENV"])
        env.setdefault("LLMAPP_WORKER_LOG_LEVEL", "WARNING")  # not three lines for every reconcile
        # gevent: each open live log pane is a greenlet, not a thread (numbers in the README, Production).
        gunicorn = ["-m", "gunicorn", "--bind", f"{host}:{port}", "--worker-class", "gevent"]
        gunicorn += ["--workers", "2", "--worker-connections", "1000", "--access-logfile", "-", "app:create_app()"]
        # Two workers: a long deploy on one leaves the other free for stops and the reconcile.
        children = [Supervised(f"worker {n}", ["-m", "jobs.worker"], env) for n in (1, 2)]
        children.append(Supervised("web server", gunicorn, env))
        for child in children:
            child.start()
        print(f"\n  llmapp is running at http://{host}:{port}/")
        for line in lines:
            print(f"  {line}")
        print("  Press Ctrl-C to stop.\n", flush=True)
        while True:
            for child in children:
                child.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
    finally:
        for child in children:
            child.stop()
        for child in children:
            child.wait()
        if app is not None and children:
            with app.app_context():  # the servers it started go too, recorded as stopped
                if stopped := deployments.shutdown_host("the platform was shut down"):
                    print(f"Stopped {stopped} application server(s).")
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
