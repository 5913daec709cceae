import pytest

from llmapp.extensions import db
from llmapp.models import Application
from llmapp.services import lifecycle
from llmapp.services.lifecycle import STATUSES, TRANSITIONS, TransitionRefused

# The lifecycle's rules, written out here rather than read from TRANSITIONS (a wrong rule there must
# fail here): for each status, where each action leads, in ACTIONS' order; None: refused.
ACTIONS = ("deploy", "deployed", "deploy_failed", "stop", "stopped", "crashed", "restart")
EXPECTED = {
    "stopped": ("deploying", None, None, None, None, None, None),
    "deploying": (None, "running", "failed", None, None, None, None),
    "running": (None, None, None, "stopping", None, "failed", "deploying"),
    "stopping": (None, None, None, None, "stopped", None, None),
    "failed": ("deploying", None, None, None, None, None, None),
}
CASES = [
    (action, status, outcome)
    for status, outcomes in EXPECTED.items()
    for action, outcome in zip(ACTIONS, outcomes, strict=True)
]


@pytest.fixture
def application(factory):
    return factory.application(factory.user(), factory.model())


def status_of(application_id):
    return db.session.scalar(db.select(Application.status).where(Application.id == application_id))


@pytest.mark.parametrize(("action", "status", "outcome"), CASES)
def test_every_transition_from_every_status(app, factory, application, action, status, outcome):
    with app.app_context():
        db.session.execute(db.update(Application).where(Application.id == application.id).values(status=status))
        db.session.commit()
        if outcome is not None:
            lifecycle.transition(application.id, action)
            assert status_of(application.id) == outcome
        else:
            with pytest.raises(TransitionRefused, match=f"this one is {status}"):
                lifecycle.transition(application.id, action)
            assert status_of(application.id) == status


def test_the_same_transition_twice_happens_once(app, application):
    """A double click: the second conditional UPDATE matches no row."""
    with app.app_context():
        lifecycle.transition(application.id, "deploy")
        with pytest.raises(TransitionRefused, match="this one is deploying"):
            lifecycle.transition(application.id, "deploy")


def test_transition_sets_the_given_columns(app, application):
    with app.app_context():
        lifecycle.transition(application.id, "deploy")
        lifecycle.transition(application.id, "deploy_failed", last_error="model directory not found")
        row = db.session.get(Application, application.id)
        assert (row.status, row.last_error) == ("failed", "model directory not found")


def test_refusal_of_a_missing_application(app):
    import uuid

    with app.app_context(), pytest.raises(TransitionRefused, match="no longer exists"):
        lifecycle.transition(uuid.uuid4(), "deploy")


@pytest.mark.parametrize("status", STATUSES)
def test_edit_unless_on_its_way_and_delete_only_when_stopped_or_failed(app, application, status):
    """A running application is edited (the edit is its next release, a draft until deployed); one on
    its way somewhere is not; only one that runs nothing is deleted."""
    with app.app_context():
        db.session.execute(db.update(Application).where(Application.id == application.id).values(status=status))
        db.session.commit()
        if status in ("stopped", "failed", "running"):
            lifecycle.claim_for_edit(application.id, description="edited")
            db.session.commit()
            assert db.session.get(Application, application.id).description == "edited"
        else:
            with pytest.raises(TransitionRefused, match="only while stopped, failed or running"):
                lifecycle.claim_for_edit(application.id, description="edited")
            assert db.session.get(Application, application.id).description == ""
        if status in ("stopped", "failed"):
            lifecycle.delete_if_editable(application.id)
            assert db.session.get(Application, application.id) is None
        else:
            with pytest.raises(TransitionRefused, match="only while stopped or failed"):
                lifecycle.delete_if_editable(application.id)


def test_the_table_covers_every_status_and_every_action():
    assert sorted(EXPECTED) == sorted(STATUSES) and sorted(ACTIONS) == sorted(TRANSITIONS)
