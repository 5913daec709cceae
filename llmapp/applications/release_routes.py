"""An application's Releases pane on its detail page: every saved setup, which one runs, and what
changed between any two (``?a=&b=``)."""

from ..web import render
from . import bp
from .routes import detail_context, get_application


@bp.get("/<application_id>/releases")
def releases_pane(application_id):
    """The Releases pane (the compare form's answer, for htmx), within the detail page otherwise."""
    application = get_application(application_id)
    return render("applications/detail.html", "applications/_releases.html", **detail_context(application))
