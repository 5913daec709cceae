"""Canaries: a release serving beside the one deployed, with a chosen share of the gateway's requests,
compared side by side (the Monitoring pane's per-release figures), then promoted (it serves everything;
the old replicas drain and stop) or aborted (its replicas drain and stop; the share goes to 0 at once).

A canary starts as a roll-out of the newest release (deployments.request_deploy with a share): its
replicas must be ready before any gateway sends them a request; then, instead of the old ones draining,
both serve, split by the share (``Application.canary_release``, ``canary_percent``; the route's weights).
"""

import uuid

from flask_babel import gettext as _

from ..extensions import db
from ..models import Application, utcnow
from . import Conflict, FieldErrors, audit, deployments, lifecycle, releases, replicas, routing
from .platform_log import log_event

SHARES = (1, 99)  # a canary's share of the gateway's requests, in percent


def check_share(share) -> int:
    """:raise FieldErrors: not a whole percentage within SHARES."""
    low, high = SHARES
    if isinstance(share, bool) or not isinstance(share, int) or not low <= share <= high:
        raise FieldErrors(
            {"share": [_("A canary takes between %(low)s and %(high)s %% of the requests.", low=low, high=high)]}
        )
    return share


def start(application: Application, share: int) -> str:
    """Roll the newest release out as a canary taking ``share`` % of the gateway's requests (or, with a
    canary running, give it that share). Returns the deploy id ("" for a new share).

    :raise FieldErrors: a share out of bounds. :raise Conflict: the newest release is the one serving,
        or it is not running. :raise TransitionRefused: a roll-out is under way.
    """
    share = check_share(share)
    if application.canary_release is not None:
        set_share(application, share)
        return ""
    if application.status != lifecycle.RUNNING:
        raise lifecycle.TransitionRefused(
            _(
                "Only a running application can try a release as a canary; this one is %(status)s.",
                status=lifecycle.STATUS_LABELS.get(application.status, application.status),
            ),
            application.status,
        )
    if application.deployed_release is None:
        raise Conflict(
            _(
                "%(name)s runs a release from before releases: deploy it once, then try a canary.",
                name=application.name,
            )
        )
    newest = releases.record(application, None, releases.DEPLOYED_NOTE)
    if newest.number == application.deployed_release:
        raise Conflict(
            _(
                "Release %(release)s is the one serving: save a change first (an edit makes the next release), "
                "then try that release as a canary.",
                release=newest.number,
            )
        )
    return deployments.request_deploy(application, canary_percent=share)


def set_share(application: Application, share: int) -> None:
    """:raise Conflict: no canary runs."""
    share = check_share(share)
    done = db.session.execute(
        db.update(Application)
        .where(Application.id == application.id, Application.canary_release.is_not(None))
        .values(canary_percent=share, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if done != 1:
        db.session.rollback()
        raise Conflict(_("%(name)s runs no canary.", name=application.name))
    audit.record("application.canary_share", application, {"canary_percent": (application.canary_percent, share)})
    db.session.commit()
    db.session.expire(application)
    routing.publish(application.id)
    log_event(application.id, f"the canary (release {application.canary_release}) now takes {share} % of the requests")


def promote(application: Application) -> None:
    """The canary's release serves every request; the old release's replicas drain and stop.

    :raise Conflict: no canary runs (or its roll-out is still under way).
    """
    canary, old_release = application.canary_release, application.deployed_release
    keep = [r for r in application.replicas if r.release == canary and r.status == "ready"]
    if canary is None or not keep:
        raise Conflict(_("%(name)s has no canary serving to promote.", name=application.name))
    audit.record("application.canary_promote", application, {"release": (old_release, canary)})
    ended = _end(application, canary, deployed_release=canary, endpoint=replicas.endpoint_url(keep[0]))
    releases.mark_served(application.id, canary)
    _drain(application, ended, [r for r in application.replicas if r not in keep])
    log_event(
        application.id, f"canary promoted: release {canary} serves every request; release {old_release}'s replicas stop"
    )


def abort(application: Application) -> None:
    """The canary's replicas drain and stop; the release deployed serves every request again (0 % at
    once: no gateway sends the canary anything new).

    :raise Conflict: no canary runs (or its roll-out is still under way).
    """
    canary = application.canary_release
    serving = [r for r in application.replicas if r.release == application.deployed_release and r.status == "ready"]
    if canary is None or not serving:
        raise Conflict(
            _(
                "%(name)s has no canary to abort beside a serving release: promote it, or stop the application.",
                name=application.name,
            )
            if canary is not None
            else _("%(name)s has no canary to abort beside a serving release.", name=application.name)
        )
    audit.record("application.canary_abort", application, {"canary_release": (canary, None)})
    ended = _end(application, canary)
    _drain(application, ended, [r for r in application.replicas if r.release == canary])
    log_event(application.id, f"canary aborted: release {application.deployed_release} serves every request again")


def _end(application: Application, canary: int, **values) -> str:
    """End the canary ``canary`` (one conditional UPDATE, not committed); the new deploy id its
    retirement runs under."""
    deploy_id = uuid.uuid4().hex
    done = db.session.execute(
        db.update(Application)
        .where(
            Application.id == application.id,
            Application.status == lifecycle.RUNNING,
            Application.canary_release == canary,
            Application.rolling_to.is_(None),
        )
        .values(canary_release=None, canary_percent=0, deploy_id=deploy_id, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done != 1:
        db.session.rollback()
        raise Conflict(_("%(name)s runs no canary to end.", name=application.name))
    return deploy_id


def _drain(application: Application, deploy_id: str, leaving: list) -> None:
    for replica in leaving:
        replica.status = "draining"
    db.session.commit()
    db.session.expire(application)
    routing.publish(application.id)
    replicas.retire(application, deploy_id, leaving)
