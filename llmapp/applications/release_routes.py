"""An application's Releases pane on its detail page: every saved setup, which one runs, what
changed between any two (``?a=&b=``), and deploying one again (a rollback, rolling while it runs)."""

from flask_login import current_user

from ..services import deployments
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
