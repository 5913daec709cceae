"""What every API request passes before its route: a personal access token (401 without one), its
token's rate limit (429), and, for a body, JSON (415) without a NUL character anywhere (422)."""

from flask import current_app, g, request
from flask_babel import gettext as _

from ..extensions import limiter
from ..runtime.keys import authorization, bearer_token
from ..services import NUL_ERROR, access_tokens, audit
from . import bp, problems


def _token_key() -> str:
    """Rate limits count per token (per address for requests without one)."""
    _scheme, token = authorization(request.headers.get("Authorization"))  # any scheme: each is counted
    return "token:" + access_tokens.digest(token) if token else "addr:" + (request.remote_addr or "")


limiter.limit(lambda: current_app.config["API_RATE_LIMIT"], key_func=_token_key)(bp)


@bp.before_request
def authenticate():
    """The user a personal access token acts as (401 for none, an unknown, revoked or expired one)."""
    if request.endpoint in ("api.openapi",):
        return None
    _scheme, credentials = authorization(request.headers.get("Authorization"))
    token = bearer_token(request.headers.get("Authorization"))
    user = access_tokens.authenticate(token) if token else None
    if user is None:
        detail = problems.HTTP_DETAILS[401] if not credentials else _("This token is unknown, revoked or expired.")
        return problems.problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="llmapp"'})
    g.api_user = user
    audit.acting_as(user, audit.request_address(), user.token_name)
    if request.method in ("POST", "PUT", "PATCH") and request.content_length:
        if not request.is_json:
            return problems.problem(415, problems.HTTP_DETAILS[415])
        body = request.get_json(silent=True)  # None: not JSON (or `null`)
        if body is None and request.get_data(cache=True).strip() != b"null":
            return problems.problem(400, _("The request body is not valid JSON."))
        if not isinstance(body, dict):  # nor `false`: a body is not an empty one
            return problems.problem(400, _("The request body must be a JSON object."))
    # As the pages' forms do: no NUL character reaches a service (PostgreSQL can't store one).
    nul = _nul_at(dict(request.args)) or _nul_at(request.get_json(silent=True) if request.is_json else None)
    if nul is not None:
        return problems.problem(422, _("The request has invalid fields."), errors={nul: [str(NUL_ERROR)]})
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
