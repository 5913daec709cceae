"""/api/v1/applications/<id>/releases: an application's releases, newest first, one by its number, and
deploying one again (a rollback)."""

from flask import g
from spectree import Response

from ..services import deployments, releases
from . import ERRORS, bp, spec
from .applications import APPLICATIONS, _transition, visible_application
from .schemas import Problem, ReleaseList, ReleaseOut, Transition

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
