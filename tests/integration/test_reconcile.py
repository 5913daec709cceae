"""The reconcile's repairs of a deploy without a lock, on the real database and Redis (no process):
a deploy job a worker has just taken, before its first step, is on its way and left alone; one that
held its lock and lost it, or that never took it long after starting, died, and the deploy fails
saying so. (A worker marks a job started a moment before the job takes its application's lock: a
reconcile in that moment used to fail a deploy that was about to run, under load.)"""

from datetime import UTC, datetime, timedelta

import pytest
from rq.job import JobStatus

from conftest import log_text, row
from llmapp import queues
from llmapp.services import deployments, reconcile


def taken_by_a_worker(app, application, started_ago_s: float, took_lock: bool) -> None:
    """The application deploying, its deploy job as RQ leaves it when a worker takes it."""
    with app.app_context():
        deploy_id = deployments.request_deploy(row(app, application.id))
        job = queues.queue().fetch_job(f"deploy-{deploy_id}")
        queues.queue().remove(job)  # no worker runs here: the job stays as it is set below
        job.set_status(JobStatus.STARTED)
        job.started_at = datetime.now(UTC) - timedelta(seconds=started_ago_s)
        job.meta[queues.TOOK_LOCK] = took_lock
        job.save()


@pytest.mark.parametrize(
    ("started_ago_s", "took_lock", "left_alone"),
    [(1, False, True), (120, False, False), (1, True, False)],
)
def test_a_deploy_job_just_taken_by_a_worker_is_left_to_it(app, factory, member, started_ago_s, took_lock, left_alone):
    application = factory.application(member, factory.model(), name="taken")
    taken_by_a_worker(app, application, started_ago_s, took_lock)
    with app.app_context():
        summary = reconcile.reconcile(queues.this_host())
    if left_alone:
        assert row(app, application.id).status == "deploying" and summary["repaired"] == 0
        assert "deploy failed" not in log_text(app, application.id)
    else:
        assert row(app, application.id).status == "failed" and summary["repaired"] == 1
        assert "its worker died" in row(app, application.id).last_error
