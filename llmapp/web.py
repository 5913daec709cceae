"""Helpers shared by the blueprints: full page or fragment, lookups, permissions, security headers."""

import functools

from flask import Response, make_response, redirect, render_template, request, stream_with_context
from flask_login import current_user
from werkzeug.routing import IntegerConverter

from .models import MAX_ID
from .services import require_admin

# Only our own vendored scripts and stylesheet; htmx is configured (base.html) to need no inline style or eval.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def wants_fragment() -> bool:
    """An htmx request that swaps part of a page. Boosted and history-restore requests need the whole page."""
    return bool(request.htmx) and not request.htmx.boosted and not request.htmx.history_restore_request


def render(page: str, fragment: str, code: int = 200, **context):
    """Render ``page``, or only ``fragment`` (which the page includes) for an htmx swap, with status ``code``."""
    response = make_response(render_template(fragment if wants_fragment() else page, **context), code)
    response.vary.add("HX-Request")
    return response


def event_stream(events) -> Response:
    """Server-sent events (services/live_logs.py sse_event makes each) as a response: streamed within the
    request's context, never cached, and not buffered by a proxy in front (nginx: X-Accel-Buffering)."""
    return Response(
        stream_with_context(events),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def redirect_to(location: str):
    """After a mutation: a browser follows a 303; htmx ignores 3xx headers, so it gets HX-Redirect.

    Not HX-Location: that fetches the page as an htmx request, and our pages answer htmx with a
    fragment, which would replace the whole body (and lose the flash message).
    """
    if request.htmx:
        response = make_response("", 200)
        response.headers["HX-Redirect"] = location
        return response
    return redirect(location, code=303)


class IdConverter(IntegerConverter):
    """``<id:name>`` in a route: a database id (1 to MAX_ID); any other number is a 404, not an overflow."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_ID)


def bounded_int(value, low: int = 1, high: int = MAX_ID, default=None) -> int | None:
    """``value`` as an int within [low, high], else ``default`` (bad input names nothing; it never overflows)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if low <= number <= high else default


def int_arg(name: str, low: int = 1, high: int = MAX_ID, default=None) -> int | None:
    """A query-string integer within [low, high], else ``default``."""
    return bounded_int(request.args.get(name), low, high, default)


def admin_required(message: str):
    """Decorate a view that only admins may open (under login_required, as flaskr's login_required is
    used): a member gets the 403 page with ``message``. The services refuse members too (Forbidden); this
    answers before a view renders anything, a form included.

        @bp.route("/new", methods=["GET", "POST"])
        @admin_required(registry.ADMIN_ONLY)
        def create(): ...
    """

    def decorator(view):
        @functools.wraps(view)
        def wrapped_view(**kwargs):
            require_admin(current_user, message)
            return view(**kwargs)

        return wrapped_view

    return decorator


def add_security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
