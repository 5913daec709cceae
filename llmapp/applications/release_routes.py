"""An application's Releases pane on its detail page: every saved setup, which one runs, what
changed between any two (``?a=&b=``), deploying one again (a rollback, rolling while it runs), and
canaries (start with a share, change it, promote, abort)."""

from flask import request
from flask_login import current_user

from ..services import FieldErrors, Invalid, canaries, deployments
from ..web import render
from . import bp
from .routes import _request, detail_context, get_application


@bp.get("/<application_id>/releases")
def releases_pane(application_id):
    """The Releases pane (the compare form's answer, for htmx), within the detail page otherwise."""
    application = get_application(application_id)
    return render("applications/detail.html", "applications/_releases.html", **detail_context(application))


@bp.post("/<application_id>/releases/<int:number>/deploy")
def deploy_release(application_id, number):
    """Deploy release ``number`` again (the page asked for confirmation): its setup becomes the next
    release, rolled out while the application runs."""
    return _request(application_id, lambda application: deployments.rollback(application, number, current_user))


def _share() -> int | str:
    """The form's share: a whole number, or what was typed (the service says why it is refused)."""
    typed = request.form.get("share", "").strip()
    return int(typed) if typed.isdecimal() and typed.isascii() and len(typed) < 4 else typed


def _canary(application, share):
    try:
        return canaries.start(application, share)
    except FieldErrors as e:  # one field: said as the flash the other refusals are
        raise Invalid(e.errors["share"][0], "share") from e


@bp.post("/<application_id>/canary")
def canary(application_id):
    """Start a canary of the newest release with the form's share, or give the running one that share."""
    share = _share()
    return _request(application_id, lambda application: _canary(application, share))


@bp.post("/<application_id>/canary/promote")
def promote_canary(application_id):
    return _request(application_id, canaries.promote)


@bp.post("/<application_id>/canary/abort")
def abort_canary(application_id):
    return _request(application_id, canaries.abort)
