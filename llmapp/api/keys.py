"""/api/v1/applications/<id>/keys: the API keys of an application's endpoint (each shown once)."""

from spectree import Response

from ..services import api_keys, routing
from . import BODY_ERRORS, ERRORS, bp, spec
from .applications import visible_application
from .schemas import KeyIn, KeyList, KeyOut, NewKey, Problem


def _key_out(row) -> KeyOut:
    return KeyOut.model_validate(row, from_attributes=True)


@bp.get("/applications/<application_id>/keys")
@spec.validate(resp=Response(HTTP_200=KeyList, **ERRORS), tags=["keys"])
def list_keys(application_id):
    """The application's API keys (never the keys themselves)."""
    application = visible_application(application_id)
    return KeyList(items=[_key_out(key) for key in api_keys.list_keys(application)])


@bp.post("/applications/<application_id>/keys")
@spec.validate(json=KeyIn, resp=Response(HTTP_201=NewKey, HTTP_503=Problem, **BODY_ERRORS), tags=["keys"])
def create_key(application_id, json: KeyIn):
    """Make a key to the application (through the gateway, or its own endpoint); the key is in this
    answer only."""
    application = visible_application(application_id)
    key, plain = api_keys.create_key(application, json.label)
    return NewKey(**_key_out(key).model_dump(), key=plain, gateway=routing.gateway_url()), 201


@bp.delete("/applications/<application_id>/keys/<int:key_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_503=Problem, **ERRORS), tags=["keys"])
def revoke_key(application_id, key_id):
    """Revoke a key: calls with it fail from now on."""
    application = visible_application(application_id)
    api_keys.revoke_key(application, key_id)
    return "", 204
