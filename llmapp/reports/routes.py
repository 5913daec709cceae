"""The Usage page (requests and tokens across applications: an admin's of everyone, a member's of their
own, by application, person and day, with the same rows as CSV) and the Audit page (who changed what)."""

from flask import abort, request
from flask_login import current_user, login_required

from ..applications.key_routes import csv_response
from ..services import Invalid, audit, users
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


def audit_filters() -> audit.Filters:
    """The Audit page's and the API's filters, from the query string (a bad number: no filter)."""
    args = request.args
    return audit.Filters(
        actor=args.get("actor", "").strip()[:200],
        object_type=args.get("object_type", "").strip()[:32],
        object_id=args.get("object_id", "").strip()[:64],
        action=args.get("action", "").strip()[:64],
        days=int_arg("days", 1, 3660),
        before_id=int_arg("before"),
        limit=int_arg("limit", 1, audit.MAX_PAGE, audit.PAGE),
    )


@bp.get("/audit")
def audit_log():
    """The audit log: an admin's of every change, a member's of changes to their own things; filtered by
    person, object, action and time, newest first, a page at a time (``?before=`` the last id shown)."""
    filters = audit_filters()
    entries = audit.entries(current_user, filters)
    return render(
        "reports/audit.html",
        "reports/_audit.html",
        entries=entries,
        filters=filters,
        object_types=audit.OBJECT_TYPES,
        more=len(entries) == filters.limit,
    )
