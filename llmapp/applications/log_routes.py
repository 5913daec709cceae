"""An application's Logs pane on its detail page: the latest lines followed live (SSE), a search by
level, text and time range, and the whole retained log as a download."""

import time
from urllib.parse import quote

from flask import Response, current_app, request, stream_with_context

from ..extensions import db
from ..services import ServiceError, live_logs
from ..services import logs as logs_service
from ..web import event_stream, render
from . import bp
from .routes import detail_context, get_application


@bp.get("/<application_id>/logs")
def logs(application_id):
    """The Logs pane: the latest lines followed live, or a search by level, text and time range."""
    application = get_application(application_id)
    args = request.args
    view = {"level": args.get("level", ""), "q": args.get("q", "").strip(), "since": args.get("since", "")}
    view["searching"] = any(view.values()) or "before" in args
    try:
        if view["searching"]:
            since = logs_service.parse_since(view["since"])
            result = logs_service.search(
                application,
                view["level"],
                view["q"],
                since=time.time() - since if since else None,
                before=logs_service.valid_id(args.get("before")),
            )
            view.update(lines=result.lines, older=result.older, scanned=result.scanned)
        else:
            view["lines"] = logs_service.recent(application, 200)
            view["last_id"] = view["lines"][-1].id if view["lines"] else None
    except ServiceError as e:
        view.update(error=str(e), lines=[], older=None, scanned=0)
    return render("applications/detail.html", "applications/_logs.html", **detail_context(application), view=view)


@bp.get("/<application_id>/logs/stream")
def logs_stream(application_id):
    """New lines as server-sent events, each with its stream id: a reconnect (Last-Event-ID, or ?after=)
    gets exactly the lines it missed. Heartbeats keep an idle stream open and find departed clients."""
    application = get_application(application_id)
    after = logs_service.valid_id(request.headers.get("Last-Event-ID") or request.args.get("after"))
    heartbeat = current_app.config["LOG_HEARTBEAT_S"]
    db.session.remove()  # no database connection held for the stream's whole life
    return event_stream(live_logs.live_events(application.id, after, heartbeat))


@bp.get("/<application_id>/logs/download")
def logs_download(application_id):
    """The whole retained log as text or NDJSON (?format=ndjson), streamed a chunk at a time."""
    application = get_application(application_id)
    ndjson = request.args.get("format") == "ndjson"
    filename = f"{application.name}-log.{'ndjson' if ndjson else 'txt'}"
    db.session.remove()
    return Response(
        stream_with_context(logs_service.export(application, "ndjson" if ndjson else "text")),
        mimetype="application/x-ndjson" if ndjson else "text/plain",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"},
    )
