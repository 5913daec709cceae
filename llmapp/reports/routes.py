"""The Usage page: requests and tokens across applications (an admin's of everyone, a member's of their
own), by application, person and day, with the same rows as CSV."""

from flask import abort, request
from flask_login import current_user, login_required

from ..applications.key_routes import csv_response
from ..services import Invalid, users
from ..services import usage as usage_service
from ..web import int_arg, render
from . import bp


@bp.before_request
@login_required
def require_login():
    """Every report needs a logged-in user."""


@bp.get("/usage")
def usage():
    """Usage over ``?days=`` (and, for an admin, one person's with ``?user=``); ``?format=csv`` as CSV."""
    user_id = int_arg("user") if current_user.is_admin else None
    try:
        report = usage_service.overview(current_user, request.args.get("days"), user_id)
    except Invalid as e:
        abort(400, str(e))
    if request.args.get("format") == "csv":
        return csv_response(report, "usage")
    people = [user for user, _ in users.list_users(acting=current_user)] if current_user.is_admin else []
    return render(
        "reports/usage.html",
        "reports/_usage.html",
        report=report,
        days=(report.until - report.since).days + 1,
        user_id=user_id,
        people=people,
        owners=usage_service.owners(report),
    )
