"""/api/v1/applications/<id>/logs: an application's log, searched a page at a time or followed live (SSE)."""

import json

from flask import current_app, request
from spectree import Response

from ..extensions import db
from ..services import live_logs
from ..services import logs as logs_service
from ..web import event_stream
from . import ERRORS, bp, spec
from .applications import visible_application
from .schemas import LogPage, LogQuery


@bp.get("/applications/<application_id>/logs")
@spec.validate(query=LogQuery, resp=Response(HTTP_200=LogPage, **ERRORS), tags=["logs"])
def application_logs(application_id, query: LogQuery):
    """The application's log, newest page first (lines oldest first within a page); ``before`` pages back."""
    application = visible_application(application_id)
    found = logs_service.search(
        application, query.level, query.q, before=logs_service.valid_id(query.before), limit=query.limit
    )
    return LogPage(items=[_line_out(line) for line in found.lines], next_before=found.older)


# Not decorated by spectree (it reads every answer's whole body, and this one never ends): document()
# (openapi.py) describes it.
@bp.get("/applications/<application_id>/logs/stream")
def application_log_stream(application_id):
    """New log lines as server-sent events (event: line, data: the line as JSON, id: its id), with a
    heartbeat comment while it is quiet. A reconnect with Last-Event-ID (or ?after=<id>) gets exactly the
    lines it missed."""
    application = visible_application(application_id)
    after = logs_service.valid_id(request.headers.get("Last-Event-ID") or request.args.get("after"))
    heartbeat = current_app.config["LOG_HEARTBEAT_S"]
    db.session.remove()  # no database connection held for the stream's whole life
    return event_stream(live_logs.live_events(application.id, after, heartbeat, _line_event))


def _line_event(line) -> str:
    """A line as the stream's SSE event (one function: the hub renders each line once for all API viewers)."""
    return live_logs.sse_event(json.dumps(_line_out(line)), "line", line.id)


def _line_out(line) -> dict:
    return {
        "id": line.id,
        "time": line.ts,
        "level": line.level,
        "source": line.source,
        "message": line.message,
        "request_id": line.request_id or None,
    }
