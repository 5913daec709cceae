"""The platform's REST API, /api/v1: the operations of the pages as JSON, for scripts and CI.

Authenticated by personal access tokens only (``Authorization: Bearer``); a session cookie never
authenticates here, so CSRF does not apply. Rate limited per token. Errors are RFC 9457 problem
details. The OpenAPI 3.1 document (/api/v1/openapi.json) is generated from the routes and their
pydantic models by spectree: chosen because it attaches to a plain Flask app and its blueprints (the
pages stay as they are), validates with pydantic v2, and writes OpenAPI 3.1 by default; apiflask
would replace the app class, and flask-smorest writes 3.0 from marshmallow schemas.
"""

from flask import Blueprint, current_app, g, request
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData

from ..extensions import csrf, db, limiter
from ..runtime.keys import authorization, bearer_token
from ..services import NUL_ERROR, ServiceError, access_tokens
from . import problems

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


def _on_invalid_request(req, resp, error, instance, model_adapter):
    """spectree's 422 for a body or query of the wrong shape, as a problem document."""
    if error is None:
        return
    errors: dict[str, list[str]] = {}
    for item in model_adapter.validation_errors(error):
        field = ".".join(str(part) for part in item.get("loc", ()))
        errors.setdefault(field, []).append(item.get("msg", "Invalid."))
    answer = problems.problem(422, "The request does not have the expected shape.", errors=errors)
    resp.set_data(answer.get_data())
    resp.mimetype = problems.MEDIA_TYPE


spec = SpecTree(
    "flask",
    title="llmapp API",
    version="1",
    description="Create, deploy, call and watch LLM applications. Authenticate with a personal access "
    "token (Account page, or flask tokens create): Authorization: Bearer <token>.",
    mode="strict",
    page_templates={},  # no CDN-loaded UI pages: the platform's own API page reads the document
    security_schemes=[
        SecurityScheme(
            name="token",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", description="A personal access token."),
        )
    ],
    security={"token": []},
    before=_on_invalid_request,
    validation_error_status=422,
)


def _token_key() -> str:
    """Rate limits count per token (per address for requests without one)."""
    _, token = authorization(request.headers.get("Authorization"))  # any scheme: each is counted
    return "token:" + access_tokens.digest(token) if token else "addr:" + (request.remote_addr or "")


limiter.limit(lambda: current_app.config["API_RATE_LIMIT"], key_func=_token_key)(bp)


@bp.before_request
def authenticate():
    """The user a personal access token acts as (401 for none, an unknown, revoked or expired one)."""
    if request.endpoint in ("api.openapi",):
        return None
    _, credentials = authorization(request.headers.get("Authorization"))
    token = bearer_token(request.headers.get("Authorization"))
    user = access_tokens.authenticate(token) if token else None
    if user is None:
        detail = problems.HTTP_DETAILS[401] if not credentials else "This token is unknown, revoked or expired."
        return problems.problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="llmapp"'})
    g.api_user = user
    if request.method in ("POST", "PUT", "PATCH") and request.content_length and not request.is_json:
        return problems.problem(415, problems.HTTP_DETAILS[415])
    # As the pages' forms do: no NUL character reaches a service (PostgreSQL can't store one).
    nul = _nul_at(dict(request.args)) or _nul_at(request.get_json(silent=True) if request.is_json else None)
    if nul is not None:
        return problems.problem(422, "The request has invalid fields.", errors={nul: [NUL_ERROR]})
    return None


def _nul_at(value, path: str = "") -> str | None:
    """Where in a JSON value (or the query) a NUL character is: "env.0.name", or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return f"{path}.{key}".lstrip(".")
        found = _nul_at(item, f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


from . import routes  # noqa: E402,F401


@bp.errorhandler(ServiceError)
def service_error(error: ServiceError):
    """A service's refusal, raised anywhere in a route, as its problem document (the routes hold no
    try/except of their own); the transaction it left is rolled back."""
    db.session.rollback()
    return problems.from_service_error(error)


@bp.errorhandler(problems.HTTPException)
def http_error(error):
    """Any HTTP error inside the API (a body that is not JSON, an unknown method) as a problem document."""
    return problems.from_http_error(error)
