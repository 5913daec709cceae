"""Run the whole platform on the embedded default: `python app.py`.

SQLite under instance/, a real Redis server it starts itself when REDIS_URL is not set, migrations
applied, an RQ worker and the web server (gunicorn) started. Ctrl-C stops everything it started.
`flask` commands run in this folder use the same configuration (they find create_app below).
"""

import os
import signal
import subprocess
import sys

import psutil

import llmapp
from llmapp import config as llmapp_config


def create_app():
    """The platform as `python app.py` and `flask` run it: development settings unless LLMAPP_ENV says otherwise."""
    return llmapp.create_app({"LLMAPP_ENV": os.environ.get("LLMAPP_ENV", llmapp_config.DEVELOPMENT)})


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM and SIGHUP stop everything, like Ctrl-C


def main() -> None:
    from llmapp.embedded import EmbeddedRedis
    from llmapp.services import bootstrap, deployments

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    host = os.environ.get("LLMAPP_HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    instance = os.path.join(llmapp.ROOT, "instance")
    embedded = app = None
    children: list[subprocess.Popen] = []
    try:
        if not os.environ.get("REDIS_URL"):
            embedded = EmbeddedRedis(instance)
            os.environ["REDIS_URL"] = embedded.start()
            print(f"Embedded Redis at {embedded.url}")
        app = create_app()
        with app.app_context():
            lines = bootstrap.prepare()
        env = dict(os.environ, LLMAPP_ENV=app.config["LLMAPP_ENV"])
        # Two workers: a long deploy on one leaves the other free for stops and the reconcile.
        children += [
            subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=llmapp.ROOT, env=env) for _ in range(2)
        ]
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--bind",
                    f"{host}:{port}",
                    "--worker-class",
                    "gthread",
                    "--workers",
                    "2",
                    "--threads",
                    "64",
                    "--access-logfile",
                    "-",
                    "app:create_app()",
                ],
                cwd=llmapp.ROOT,
                env=env,
            )
        )
        print(f"\n  llmapp is running at http://{host}:{port}/")
        for line in lines:
            print(f"  {line}")
        print("  Press Ctrl-C to stop.\n", flush=True)
        while all(child.poll() is None for child in children):
            try:
                children[0].wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        print("A platform process exited; stopping the rest.", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nStopping…")
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for process in [*psutil.Process(child.pid).children(recursive=True), child]:
                    process.kill()  # gunicorn's workers too, not only its master
        if app is not None and children:
            with app.app_context():  # the servers it started go too, recorded as stopped
                if stopped := deployments.shutdown_host("the platform was shut down"):
                    print(f"Stopped {stopped} application server(s).")
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
