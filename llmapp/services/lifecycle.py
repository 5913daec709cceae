"""The lifecycle of an application: which transitions are allowed, enforced in one place.

    stopped ──deploy──► deploying ──deployed──► running ──stop──► stopping ──stopped──► stopped
       ▲                    │ deploy_failed  ▲ restart │ crashed
       └──── deploy ◄── failed ◄─────────────┴─────────┘

A running application rolls out a release beside the one it serves (``begin_roll``, ``end_roll``): it
stays running throughout, with ``rolling_to`` naming the release coming up.

Every transition is one conditional UPDATE (... WHERE status IN (sources)), so a double click or
two browsers can never perform it twice: the second UPDATE matches no row and is refused.
"""

from dataclasses import dataclass

from flask_babel import gettext as _
from sqlalchemy import delete, update

from ..extensions import db
from ..i18n import _l
from ..models import Application, utcnow
from . import Conflict, routing

STOPPED, DEPLOYING, RUNNING, STOPPING, FAILED = "stopped", "deploying", "running", "stopping", "failed"
STATUSES = (STOPPED, DEPLOYING, RUNNING, STOPPING, FAILED)
# What a page calls each status (the status itself is data: URLs, the API, the CLI keep it as is).
STATUS_LABELS = {
    STOPPED: _l("stopped"),
    DEPLOYING: _l("deploying"),
    RUNNING: _l("running"),
    STOPPING: _l("stopping"),
    FAILED: _l("failed"),
}
# An edit of a running application is its next release, a draft until deployed; nothing on its way
# somewhere is edited. Only what runs nothing can be deleted.
EDITABLE = frozenset({STOPPED, FAILED, RUNNING})
DELETABLE = frozenset({STOPPED, FAILED})


@dataclass(frozen=True)
class Transition:
    sources: frozenset[str]
    target: str
    refusal: str  # why it is refused, %(status)s the current status (what a page calls it)


TRANSITIONS = {
    "deploy": Transition(
        frozenset({STOPPED, FAILED}),
        DEPLOYING,
        _l("Only a stopped or failed application can be deployed; this one is %(status)s."),
    ),
    "deployed": Transition(
        frozenset({DEPLOYING}), RUNNING, _l("Only a deploying application can become running; this one is %(status)s.")
    ),
    "deploy_failed": Transition(
        frozenset({DEPLOYING}), FAILED, _l("Only a deploying application can fail to deploy; this one is %(status)s.")
    ),
    "stop": Transition(
        frozenset({RUNNING}), STOPPING, _l("Only a running application can be stopped; this one is %(status)s.")
    ),
    "stopped": Transition(
        frozenset({STOPPING}), STOPPED, _l("Only a stopping application can become stopped; this one is %(status)s.")
    ),
    "crashed": Transition(
        frozenset({RUNNING}), FAILED, _l("Only a running application can crash; this one is %(status)s.")
    ),
    # The restart policy brings a crashed server back through a new deploy.
    "restart": Transition(
        frozenset({RUNNING}), DEPLOYING, _l("Only a running application can be restarted; this one is %(status)s.")
    ),
}


class TransitionRefused(Conflict):
    """``current_status``: the application's status when it was refused (None: it no longer exists)."""

    def __init__(self, message: str, current_status: str | None = None):
        super().__init__(message)
        self.current_status = current_status


def allowed_actions(status: str) -> frozenset[str]:
    """What a user may ask of an application in this status: drives which buttons are enabled."""
    actions = {"view"}
    if status in EDITABLE:
        actions.add("edit")
    if status in DELETABLE:
        actions.add("delete")
    actions |= {name for name in ("deploy", "stop") if status in TRANSITIONS[name].sources}
    if status == RUNNING:
        actions |= {"call", "roll"}
    return frozenset(actions)


def _refusal(application_id, message: str) -> TransitionRefused:
    """``message``: the refusal, with %(status)s for the application's status now (as a page calls it)."""
    current = db.session.scalar(db.select(Application.status).where(Application.id == application_id))
    if current is None:
        return TransitionRefused(_("This application no longer exists."))
    return TransitionRefused(str(message) % {"status": STATUS_LABELS.get(current, current)}, current)


def _audit(action: str, application_id, changes: dict | None = None) -> None:
    from . import audit

    audit.record(action, db.session.get(Application, application_id), changes)


def transition(application_id, action: str, **values) -> None:
    """Move an application along ``action`` with one conditional UPDATE, setting ``values`` too.

    :raise TransitionRefused: the application is not in a status the action starts from.
    """
    rule = TRANSITIONS[action]
    result = db.session.execute(
        update(Application)
        .where(Application.id == application_id, Application.status.in_(rule.sources))
        .values(status=rule.target, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise _refusal(application_id, rule.refusal)
    if action in ("deploy", "stop"):  # what a person asks for (a job's transitions are not theirs)
        _audit(f"application.{action}", application_id)
    db.session.commit()
    routing.publish(application_id)


def begin_roll(application_id, **values) -> None:
    """Start rolling a running application out to another release (one conditional UPDATE).

    :raise TransitionRefused: it is not running, or a roll-out is already under way.
    """
    result = db.session.execute(
        update(Application)
        .where(
            Application.id == application_id,
            Application.status == RUNNING,
            Application.rolling_to.is_(None),
            Application.canary_release.is_(None),
        )
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        current = db.session.get(Application, application_id)
        if current is not None and current.status == RUNNING and current.canary_release is not None:
            raise TransitionRefused(
                _("Release %(release)s runs as a canary: promote or abort it first.", release=current.canary_release),
                RUNNING,
            )
        if current is not None and current.status == RUNNING:
            raise TransitionRefused(
                _(
                    "Release %(release)s is being rolled out; wait until it serves or fails.",
                    release=current.rolling_to,
                ),
                RUNNING,
            )
        raise _refusal(
            application_id, _("Only a running application can be rolled out to a release; this one is %(status)s.")
        )
    changes = {"release": (None, values.get("rolling_to"))}
    if values.get("canary_percent"):
        changes["canary_percent"] = (0, values["canary_percent"])
    _audit("application.deploy", application_id, changes)
    db.session.commit()


def end_roll(application_id, deploy_id: str, **values) -> bool:
    """Finish the roll-out ``deploy_id`` (it served, or failed): whether it was still under way (a stop
    or a restart meanwhile ends it too). The caller commits, with its replicas' changes."""
    result = db.session.execute(
        update(Application)
        .where(
            Application.id == application_id,
            Application.status == RUNNING,
            Application.deploy_id == deploy_id,
            Application.rolling_to.is_not(None),
        )
        .values(updated_at=utcnow(), rolling_to=None, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim_for_edit(application_id, **values) -> None:
    """Update an application's own columns only while it is editable (one conditional UPDATE).

    The caller commits, so related rows (environment variables) change in the same transaction.
    :raise TransitionRefused: it is running or in a transitional status.
    """
    result = db.session.execute(
        update(Application)
        .where(Application.id == application_id, Application.status.in_(EDITABLE))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise _refusal(
            application_id,
            _("An application can be edited only while stopped, failed or running; this one is %(status)s."),
        )


def delete_if_editable(application_id) -> None:
    """Delete an application only while it is stopped or failed (one conditional DELETE).

    :raise TransitionRefused: it is running or in a transitional status.
    """
    result = db.session.execute(
        delete(Application)
        .where(Application.id == application_id, Application.status.in_(DELETABLE))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise _refusal(
            application_id, _("An application can be deleted only while stopped or failed; this one is %(status)s.")
        )
    db.session.commit()
    routing.publish(application_id)
