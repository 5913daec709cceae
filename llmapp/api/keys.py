"""/api/v1/applications/<id>/keys: the API keys of an application's endpoint (each shown once), with
their limits."""

from spectree import Response

from ..services import api_keys, quotas, routing
from . import BODY_ERRORS, ERRORS, bp, spec
from .applications import visible_application
from .quota_schemas import KeyIn, KeyList, KeyOut, Limits, LimitsOut, NewKey
from .schemas import Problem


def limits_out(target) -> LimitsOut:
    return LimitsOut(**target.limits)


def _key_out(row) -> KeyOut:
    fields = {name: getattr(row, name) for name in ("id", "label", "prefix", "created_at", "last_used_at")}
    return KeyOut(**fields, revoked_at=row.revoked_at, limits=limits_out(row))


@bp.get("/applications/<application_id>/keys")
@spec.validate(resp=Response(HTTP_200=KeyList, **ERRORS), tags=["keys"])
def list_keys(application_id):
    """The application's API keys (never the keys themselves)."""
    application = visible_application(application_id)
    return KeyList(items=[_key_out(key) for key in api_keys.list_keys(application)])


@bp.post("/applications/<application_id>/keys")
@spec.validate(json=KeyIn, resp=Response(HTTP_201=NewKey, HTTP_503=Problem, **BODY_ERRORS), tags=["keys"])
def create_key(application_id, json: KeyIn):
    """Make a key to the application (through the gateway, or its own endpoint), with limits if given;
    the key is in this answer only."""
    application = visible_application(application_id)
    limits = json.limits.model_dump(exclude_unset=True) if json.limits else {}
    key, plain = api_keys.create_key(application, json.label, limits)
    return NewKey(**_key_out(key).model_dump(), key=plain, gateway=routing.gateway_url()), 201


@bp.put("/applications/<application_id>/keys/<int:key_id>/limits")
@spec.validate(json=Limits, resp=Response(HTTP_200=KeyOut, HTTP_503=Problem, **BODY_ERRORS), tags=["keys"])
def set_key_limits(application_id, key_id, json: Limits):
    """Change a key's limits (a limit left out stays; 0 or null removes it); the next request obeys them."""
    application = visible_application(application_id)
    return _key_out(quotas.set_key_limits(application, key_id, json.model_dump(exclude_unset=True)))


@bp.delete("/applications/<application_id>/keys/<int:key_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_503=Problem, **ERRORS), tags=["keys"])
def revoke_key(application_id, key_id):
    """Revoke a key: calls with it fail from now on."""
    application = visible_application(application_id)
    api_keys.revoke_key(application, key_id)
    return "", 204
