import pytest

from llmapp.extensions import db
from llmapp.models import Application
from llmapp.services import lifecycle
from llmapp.services.lifecycle import STATUSES, TRANSITIONS, TransitionRefused

CASES = [(action, status) for action in TRANSITIONS for status in STATUSES]


@pytest.fixture
def application(factory):
    return factory.application(factory.user(), factory.model())


def status_of(application_id):
    return db.session.scalar(db.select(Application.status).where(Application.id == application_id))


@pytest.mark.parametrize(("action", "status"), CASES)
def test_every_transition_from_every_status(app, factory, application, action, status):
    rule = TRANSITIONS[action]
    with app.app_context():
        db.session.execute(db.update(Application).where(Application.id == application.id).values(status=status))
        db.session.commit()
        if status in rule.sources:
            lifecycle.transition(application.id, action)
            assert status_of(application.id) == rule.target
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
def test_edit_and_delete_only_when_stopped_or_failed(app, application, status):
    with app.app_context():
        db.session.execute(db.update(Application).where(Application.id == application.id).values(status=status))
        db.session.commit()
        if status in ("stopped", "failed"):
            lifecycle.claim_for_edit(application.id, description="edited")
            db.session.commit()
            assert db.session.get(Application, application.id).description == "edited"
            lifecycle.delete_if_editable(application.id)
            assert db.session.get(Application, application.id) is None
        else:
            with pytest.raises(TransitionRefused, match="only while stopped or failed"):
                lifecycle.claim_for_edit(application.id, description="edited")
            with pytest.raises(TransitionRefused, match="only while stopped or failed"):
                lifecycle.delete_if_editable(application.id)
            assert db.session.get(Application, application.id).description == ""


@pytest.mark.parametrize(
    ("status", "actions"),
    [
        ("stopped", {"view", "edit", "delete", "deploy"}),
        ("failed", {"view", "edit", "delete", "deploy"}),
        ("running", {"view", "stop", "call"}),
        ("deploying", {"view"}),
        ("stopping", {"view"}),
    ],
)
def test_allowed_actions(status, actions):
    assert lifecycle.allowed_actions(status) == actions
