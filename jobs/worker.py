"""The RQ worker entry point: builds the app once, then works its queues inside an app context.

    python -m jobs.worker

It listens to this host's queue (stops and reconciles of the servers that run here) and to the
shared "default" queue (deploys), and schedules the reconcile of its host every few seconds.
Run one or more on every machine that should serve applications (see README, "More machines").
"""

import os
import threading

from rq import Worker


class AppWorker(Worker):
    """Forks a work horse per job, as rq does; the horse must not share the parent's DB connections."""

    def main_work_horse(self, *args, **kwargs):
        from llmapp.extensions import db

        db.engine.dispose(close=False)
        return super().main_work_horse(*args, **kwargs)


def schedule_reconcile(app, stop: threading.Event) -> None:
    """Every RECONCILE_INTERVAL_S, enqueue one reconcile for this host (a Redis lock dedupes the workers)."""
    from llmapp import queues

    interval = app.config["RECONCILE_INTERVAL_S"]
    with app.app_context():
        host = queues.this_host()
        while not stop.wait(interval):
            if queues.connection().set(f"llmapp:reconcile-due:{host}", "1", nx=True, ex=max(1, int(interval))):
                queues.queue(queues.host_queue_name(host)).enqueue(
                    "jobs.deploy.reconcile_host", host, job_timeout=120, result_ttl=60, failure_ttl=3600
                )


def main() -> None:
    from app import create_app  # the project's entry point: same config as `python app.py`
    from llmapp import queues

    app = create_app()
    if not app.config.get("REDIS_URL"):
        raise SystemExit("REDIS_URL is not set and no embedded Redis is running (start `python app.py`).")
    with app.app_context():
        names = [queues.host_queue_name(queues.this_host()), queues.DEFAULT_QUEUE]
        worker = AppWorker([queues.queue(name) for name in names], connection=queues.connection())
        stop = threading.Event()
        threading.Thread(target=schedule_reconcile, args=(app, stop), daemon=True, name="reconcile").start()
        try:
            worker.work(with_scheduler=True, logging_level=os.environ.get("LLMAPP_WORKER_LOG_LEVEL", "INFO"))
        finally:
            stop.set()


if __name__ == "__main__":
    main()
