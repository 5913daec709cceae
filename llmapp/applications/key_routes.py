"""An application's API keys section (keys, each key's limits, the application's limits) and its Usage
section, on the detail page; the usage as CSV."""

from flask import Response, abort, render_template, request
from flask_babel import gettext as _

from ..services import FieldErrors, Invalid, NotFound, ServiceError, api_keys, quotas
from ..services import usage as usage_service
from ..web import render
from . import bp
from .routes import detail_context, get_application


def _keys_section(application, new_key=None, error=None, code=200):
    html = render_template(
        "applications/_keys.html",
        application=application,
        keys=api_keys.list_keys(application),
        new_key=new_key,
        error=error,
        limit_labels=quotas.LABELS,
        cache_hit_cost=quotas.CACHE_HIT_COST,
    )
    return html, code


def _limits_form() -> dict:
    """The limit fields the form sent (an empty one: no limit)."""
    return {kind: request.form.get(kind, "").strip() for kind in quotas.FIELDS if kind in request.form}


def _refused(error: ServiceError) -> str:
    if isinstance(error, FieldErrors):
        return " ".join(message for messages in error.errors.values() for message in messages)
    return str(error)


@bp.post("/<application_id>/keys")
def create_key(application_id):
    """Make an API key (with limits, if the form gives some) and show it once, in the keys section."""
    application = get_application(application_id)
    label = request.form.get("label", "").strip()[:100]
    try:
        _key, plain = api_keys.create_key(application, label, _limits_form())
    except ServiceError as e:
        return _keys_section(application, error=_refused(e), code=422 if isinstance(e, Invalid) else 200)
    return _keys_section(application, new_key=plain)


@bp.post("/<application_id>/keys/<id:key_id>/revoke")
def revoke_key(application_id, key_id):
    """Revoke a key: the running server refuses it from the next request on."""
    application = get_application(application_id)
    try:
        api_keys.revoke_key(application, key_id)
    except NotFound:
        abort(404, _("No such key."))
    except ServiceError as e:
        return _keys_section(application, error=str(e))
    return _keys_section(application)


@bp.post("/<application_id>/keys/<id:key_id>/limits")
def key_limits(application_id, key_id):
    """Change a key's limits: the next request with it obeys them."""
    application = get_application(application_id)
    try:
        quotas.set_key_limits(application, key_id, _limits_form())
    except NotFound:
        abort(404, _("No such key."))
    except ServiceError as e:
        return _keys_section(application, error=_refused(e), code=422 if isinstance(e, Invalid) else 200)
    return _keys_section(application)


@bp.post("/<application_id>/limits")
def application_limits(application_id):
    """Change the application's limits (across all its keys)."""
    application = get_application(application_id)
    try:
        quotas.set_application_limits(application, _limits_form())
    except ServiceError as e:
        return _keys_section(application, error=_refused(e), code=422 if isinstance(e, Invalid) else 200)
    return _keys_section(application)


@bp.get("/<application_id>/usage")
def usage(application_id):
    """The Usage section over ``?days=`` (within the detail page, or alone for htmx); ``?format=csv``: the
    same rows as CSV."""
    application = get_application(application_id)
    try:
        report = usage_service.for_application(application, request.args.get("days"))
    except Invalid as e:
        abort(400, str(e))
    if request.args.get("format") == "csv":
        return csv_response(report, f"usage-{application.name}")
    context = {**detail_context(application), "usage_report": lambda: report}
    return render("applications/detail.html", "applications/_usage.html", **context)


def csv_response(report, name: str) -> Response:
    filename = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return Response(
        usage_service.as_csv(report),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}-{report.since}-{report.until}.csv"'},
    )
