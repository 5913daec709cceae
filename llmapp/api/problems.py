"""Errors of the REST API as RFC 9457 problem details (application/problem+json).

The human ``detail`` (and the messages in ``errors``) speak the request's Accept-Language (llmapp/i18n.py);
``type``, ``title`` and ``status`` stay the same in every language, for scripts to match on."""

from flask import Response, json
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from ..i18n import _l
from ..services import Conflict, FieldErrors, Forbidden, Invalid, NotFound, ServiceError, Taken
from ..services.lifecycle import TransitionRefused

MEDIA_TYPE = "application/problem+json"


def problem_document(status: int, detail: str, **extra) -> dict:
    """The document; ``detail`` and the messages of ``errors`` become plain text here (a lazy message is
    read in the request's language), never handed to JSON as they are."""
    body = {
        "type": "about:blank",
        "title": HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": str(detail),
    }
    if extra.get("errors") is not None:
        extra["errors"] = {
            str(field): [str(message) for message in messages] for field, messages in extra["errors"].items()
        }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem(status: int, detail: str, headers: dict | None = None, **extra) -> Response:
    return Response(json.dumps(problem_document(status, detail, **extra)), status=status, mimetype=MEDIA_TYPE,
                    headers=headers)  # fmt: skip


def on_invalid_request(req, resp, error, instance, model_adapter):
    """spectree's 422 for a body or query of the wrong shape, as a problem document (its ``before`` hook)."""
    if error is None:
        return
    errors: dict[str, list[str]] = {}
    for item in model_adapter.validation_errors(error):
        field = ".".join(str(part) for part in item.get("loc", ()))
        errors.setdefault(field, []).append(item.get("msg") or _("Invalid."))
    answer = problem(422, _("The request does not have the expected shape."), errors=errors)
    resp.set_data(answer.get_data())
    resp.mimetype = MEDIA_TYPE


def from_service_error(error: ServiceError) -> Response:
    """A service's refusal: a value another row holds 409 (per field), other per-field errors 422, not
    found (or not yours to see) 404, not yours to do (an admin's operation, an admin's published
    plugin) 403, a conflict 409 (with the application's status now, for a refused transition),
    anything else 503 (e.g. Redis unreachable)."""
    if isinstance(error, Taken):  # well formed, but another row holds the value: a conflict
        return problem(409, str(error), errors=error.errors)
    if isinstance(error, FieldErrors):
        return problem(422, _("The request has invalid fields."), errors=error.errors)
    if isinstance(error, Invalid) and isinstance(getattr(error, "errors", None), dict):  # a plugin's configuration
        errors = {f"config.{name}" if name else "config": messages for name, messages in error.errors.items()}
        return problem(422, str(error), errors=errors)
    if isinstance(error, Invalid):
        return problem(422, str(error), errors={error.field or "": [str(error)]})
    if isinstance(error, NotFound):
        return problem(404, str(error))
    if isinstance(error, Forbidden):
        return problem(403, str(error))
    if isinstance(error, TransitionRefused | Conflict):
        return problem(409, str(error), current_status=getattr(error, "current_status", None))
    return problem(503, str(error), headers={"Retry-After": "5"})  # e.g. Redis unreachable


# Lazy messages: problem_document reads them in the request's language.
HTTP_DETAILS = {
    401: _l("Send a personal access token: Authorization: Bearer <token> (made on your Account page)."),
    403: _l("Your account is not allowed to do this."),
    404: _l("No such resource, or it is not yours."),
    405: _l("This method is not allowed here."),
    413: _l("The request body is too large."),
    415: _l("Send JSON (Content-Type: application/json)."),
    429: _l("Too many requests with this token: wait and retry (see Retry-After)."),
}


def from_http_error(error: HTTPException) -> Response:
    code = error.code or 500
    headers = dict(error.get_headers()) if code in (405, 429) else {}  # Allow (RFC 9110), Retry-After
    headers.pop("Content-Type", None)
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="llmapp"'
    if code == 429 and "Retry-After" not in headers:
        headers["Retry-After"] = "60"
    described = error.description if error.description != type(error).description else None
    if code == 429:  # Flask-Limiter's description is the limit itself ("600 per 1 minute")
        detail = _("Too many requests with this token (at most %(limit)s): retry after the pause Retry-After gives.",
                   limit=described)  # fmt: skip
        return problem(429, detail, headers=headers)
    return problem(code, described or HTTP_DETAILS.get(code, HTTP_STATUS_CODES.get(code, "Error")), headers=headers)


def answer_unparsed_requests_with_problems(worker) -> None:
    """A request gunicorn can't parse never reaches the app: gunicorn answers it with an HTML page of its
    own. Make that answer a problem document too, and a request line over the limit 414 (RFC 9110), not
    400 (the document declares 414 on every operation). Called in each web server worker
    (gunicorn.conf.py); gunicorn keeps deciding the status of the rest and logging them."""
    from gunicorn import util
    from gunicorn.http.errors import LimitRequestLine

    handle_error = worker.handle_error

    def write(sock, status: int, reason: str, detail: str) -> None:
        body = json.dumps(problem_document(status, detail or reason)).encode()
        head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {MEDIA_TYPE}\r\n"
        util.write_nonblock(sock, f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)

    def handle(req, client, addr, exc):
        if not isinstance(exc, LimitRequestLine):
            return handle_error(req, client, addr, exc)  # its status, its log line, then write() below
        limit = worker.cfg.limit_request_line
        worker.log.warning("Request line over %d bytes from ip=%s", limit, (addr or ("",))[0])
        try:
            write(client, 414, "URI Too Long", f"The request line is longer than {limit} bytes: send long values "
                  "in a request body.")  # fmt: skip
        except OSError:
            worker.log.debug("Failed to send error message.")

    worker.handle_error = handle
    util.write_error = write  # what gunicorn's handle_error writes its answer with
