"""/api/v1/applications/<id>/releases: an application's releases, newest first, one by its number, and
deploying one again (a rollback); /canary: trying the newest as a canary, then promoting or aborting it."""

from flask import g
from spectree import Response

from ..services import canaries, deployments, releases
from . import BODY_ERRORS, ERRORS, bp, spec
from .applications import APPLICATIONS, _transition, visible_application
from .schemas import CanaryIn, Problem, ReleaseList, ReleaseOut, Transition

RELEASES = ["releases"]


def _out(application, release) -> ReleaseOut:
    return ReleaseOut(
        number=release.number,
        created_at=release.created_at,
        author=release.author.email if release.author else None,
        note=release.note,
        current=release.number == releases.serving(application),
        setup=releases.shown_setup(release),
    )


@bp.get("/applications/<application_id>/releases")
@spec.validate(resp=Response(HTTP_200=ReleaseList, **ERRORS), tags=RELEASES)
def list_releases(application_id):
    """Every saved setup of the application, newest first; ``current`` marks the one its server runs."""
    application = visible_application(application_id)
    return ReleaseList(items=[_out(application, release) for release in releases.history(application)])


@bp.get("/applications/<application_id>/releases/<int:number>")
@spec.validate(resp=Response(HTTP_200=ReleaseOut, **ERRORS), tags=RELEASES)
def get_release(application_id, number):
    """One release of the application, by its number."""
    application = visible_application(application_id)
    releases.history(application)  # an application from before releases gets its first one
    return _out(application, releases.get(application, number))


@bp.post("/applications/<application_id>/releases/<int:number>/deploy")
@spec.validate(
    resp=Response(HTTP_202=Transition, HTTP_409=Problem, HTTP_503=Problem, **ERRORS), tags=[*RELEASES, *APPLICATIONS]
)
def deploy_release(application_id, number):
    """Roll back (or forward) to release ``number``: its setup becomes the next release and is deployed,
    rolled out while the application runs (no request dropped). Poll the application as after a deploy."""
    return _transition(application_id, lambda application: deployments.rollback(application, number, g.api_user))


@bp.post("/applications/<application_id>/canary")
@spec.validate(
    json=CanaryIn, resp=Response(HTTP_202=Transition, HTTP_409=Problem, HTTP_503=Problem, **BODY_ERRORS), tags=RELEASES
)
def start_canary(application_id, json: CanaryIn):
    """Roll the newest release out as a canary taking ``share`` % of the gateway's requests, beside the
    release deployed (poll the application until ``rolling_to`` is null: ``canary_release`` then names
    it); with a canary running, give it that share."""
    return _transition(application_id, lambda application: canaries.start(application, json.share) or None)


@bp.post("/applications/<application_id>/canary/promote")
@spec.validate(resp=Response(HTTP_202=Transition, HTTP_409=Problem, **ERRORS), tags=RELEASES)
def promote_canary(application_id):
    """The canary's release serves every request; the old release's servers finish and stop."""
    return _transition(application_id, canaries.promote)


@bp.post("/applications/<application_id>/canary/abort")
@spec.validate(resp=Response(HTTP_202=Transition, HTTP_409=Problem, **ERRORS), tags=RELEASES)
def abort_canary(application_id):
    """The canary gets no new request (0 % at once); its servers finish and stop."""
    return _transition(application_id, canaries.abort)
