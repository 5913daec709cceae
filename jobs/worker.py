"""The RQ worker entry point: builds the app once, then works its queues inside an app context.

    python -m jobs.worker

It listens to this host's queue (stops and reconciles of the servers that run here) and to the
shared "default" queue (deploys), and schedules the reconcile of its host every few seconds.
Run one or more on every machine that should serve applications (see README, "More machines").
Like the web app it follows LLMAPP_ENV (default production: SECRET_KEY is required).
"""

import contextlib
import logging
import os
import threading
import time

import redis
from rq import Worker

log = logging.getLogger("llmapp.worker")


class AppWorker(Worker):
    """Forks a work horse per job, as rq does; the horse must not share the parent's DB connections.
    It runs only the platform's jobs (functions of the jobs package), read as JSON."""

    def main_work_horse(self, *args, **kwargs):
        from llmapp.extensions import db

        db.engine.dispose(close=False)
        return super().main_work_horse(*args, **kwargs)

    def perform_job(self, job, queue) -> bool:
        from llmapp.queues import JOBS_PACKAGE

        if not job.func_name.startswith(JOBS_PACKAGE):
            log.error("refused job %s: %r is not one of the platform's jobs", job.id, job.func_name)
            self.handle_job_failure(
                job, queue, exc_string=f"refused: {job.func_name!r} is not one of the platform's jobs"
            )
            return False
        return super().perform_job(job, queue)


def schedule_reconcile(app, stop: threading.Event) -> None:
    """Every HOST_HEARTBEAT_S, announce this host (services/hosts.py) and queue one recovery of the
    replicas of hosts that are down; every RECONCILE_INTERVAL_S, queue one reconcile for this host,
    unless one already waits there (the reconcile clears the mark when it starts; the mark's TTL covers a
    lost job); and every LOG_TRIM_INTERVAL_S the platform's upkeep (the same mark). It outlives Redis
    outages: an error is logged once and the loop carries on."""
    from llmapp import keyspace, queues
    from llmapp.services import hosts

    interval, trim_every = app.config["RECONCILE_INTERVAL_S"], app.config["LOG_TRIM_INTERVAL_S"]
    heartbeat_every = app.config["HOST_HEARTBEAT_S"]
    failing = False
    next_trim = next_heartbeat = next_reconcile = time.monotonic()
    with app.app_context():
        host = queues.this_host()
        while not stop.wait(min(interval, heartbeat_every, 1.0)):
            try:
                if time.monotonic() >= next_heartbeat:  # this host is up; a recovery of those that are not
                    next_heartbeat = time.monotonic() + heartbeat_every
                    hosts.announce()
                    if queues.connection().set(keyspace.recover_queued(), "1", nx=True, ex=60):
                        queues.queue().enqueue("jobs.deploy.recover_hosts", job_timeout=300, result_ttl=60)
                if time.monotonic() < next_reconcile:
                    continue
                next_reconcile = time.monotonic() + interval
                if queues.connection().set(
                    keyspace.reconcile_queued(host), "1", nx=True, ex=max(60, int(interval * 10))
                ):
                    queues.queue(queues.host_queue_name(host)).enqueue(
                        "jobs.deploy.reconcile_host", host, job_timeout=300, result_ttl=60, failure_ttl=3600
                    )
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + trim_every
                    if queues.connection().set(keyspace.trim_logs_queued(), "1", nx=True, ex=int(trim_every * 10) + 60):
                        queues.queue().enqueue("jobs.maintenance.upkeep", job_timeout=300, result_ttl=60)
                if failing:
                    log.warning("Redis is reachable again: reconciling %s", host)
                failing = False
            except redis.RedisError as e:
                if not failing:
                    log.error("Redis is unreachable (%s): the reconcile of %s waits for it", e, host)
                failing = True


def wait_for_redis(connection) -> None:
    """Until Redis answers again (1, 2, 4… up to 10 s between tries)."""
    delay = 1.0
    while True:
        try:
            connection.ping()
            return
        except redis.RedisError:
            time.sleep(delay)
            delay = min(delay * 2, 10)


def main() -> None:
    from llmapp import create_app, queues

    try:
        app = create_app()
    except RuntimeError as e:  # e.g. production without SECRET_KEY: it could not decrypt stored secrets
        raise SystemExit(f"The worker can't start: {e}") from e
    if not app.config.get("REDIS_URL"):
        raise SystemExit("REDIS_URL is not set and no embedded Redis is running (start `python app.py`).")
    logging.basicConfig(level=os.environ.get("LLMAPP_WORKER_LOG_LEVEL", "INFO"))
    with app.app_context():
        names = [queues.host_queue_name(queues.this_host()), queues.DEFAULT_QUEUE]
        from llmapp.services import hosts, server_processes

        fork_server = server_processes.start_fork_server()  # its jobs' servers start warm (forked)

        with contextlib.suppress(redis.RedisError):
            hosts.announce()  # known before the first deploy is placed
        stop = threading.Event()
        threading.Thread(target=schedule_reconcile, args=(app, stop), daemon=True, name="reconcile").start()
        try:
            # rq's loop ends by itself on some Redis errors (a lost connection while a job runs, a
            # timeout): unless it was asked to stop (SIGTERM, Ctrl-C), wait for Redis and start again.
            while True:
                # Maintenance (which also restarts rq's scheduler if an outage ended it) every 30 s, not 10 min.
                worker = AppWorker(
                    [queues.queue(name) for name in names],
                    connection=queues.connection(),
                    maintenance_interval=30,
                    serializer=queues.SERIALIZER,
                )
                try:
                    worker.work(with_scheduler=True, logging_level=os.environ.get("LLMAPP_WORKER_LOG_LEVEL", "INFO"))
                except redis.RedisError as e:
                    log.error("The worker lost Redis (%s); it starts again when Redis answers.", e)
                if worker._shutdown_requested_date is not None:  # rq's mark of a SIGTERM or Ctrl-C
                    break
                log.error("The worker's loop ended without being asked to; it starts again when Redis answers.")
                wait_for_redis(queues.connection())
        finally:
            stop.set()
            server_processes.stop_fork_server(fork_server)


if __name__ == "__main__":
    main()
