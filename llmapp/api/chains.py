"""/api/v1/applications/<id>/plugins: an application's plugin chain (attach, turn on or off, override,
move, detach), live on a running application. Documented with the plugins."""

from flask import g
from spectree import Response

from ..services import plugins
from . import BODY_ERRORS, ERRORS, bp, spec
from .applications import visible_application
from .schemas import AttachIn, Chain, ChainStep, ChainStepIn, Problem

PLUGINS = ["plugins"]


def _chain_out(application) -> Chain:
    return Chain(
        items=[
            ChainStep(
                position=position,
                plugin_id=link.plugin_id,
                name=link.plugin.name,
                type=link.plugin.type,
                enabled=link.enabled,
                plugin_enabled=link.plugin.enabled,
                overrides=link.config or {},
            )
            for position, link in enumerate(plugins.chain(application), 1)
        ]
    )


@bp.get("/applications/<application_id>/plugins")
@spec.validate(resp=Response(HTTP_200=Chain, **ERRORS), tags=PLUGINS)
def application_chain(application_id):
    """The plugins attached to the application, in the order requests pass them."""
    return _chain_out(visible_application(application_id))


@bp.post("/applications/<application_id>/plugins")
@spec.validate(json=AttachIn, resp=Response(HTTP_201=Chain, HTTP_409=Problem, **BODY_ERRORS), tags=PLUGINS)
def attach_plugin(application_id, json: AttachIn):
    """Attach a plugin you can see at the end of the chain (live on a running application)."""
    application = visible_application(application_id)
    plugins.attach(application, g.api_user, json.plugin_id)
    return _chain_out(application), 201


@bp.put("/applications/<application_id>/plugins/<int:plugin_id>")
@spec.validate(json=ChainStepIn, resp=Response(HTTP_200=Chain, **BODY_ERRORS), tags=PLUGINS)
def change_chain_step(application_id, plugin_id, json: ChainStepIn):
    """Turn an attached plugin on or off here, set this application's overrides of its settings
    (errors at config.<setting>), or move it one place up or down."""
    application = visible_application(application_id)
    plugins.attached(application, plugin_id)  # 404 when it is not attached, whatever the body asks
    if json.overrides is not None:
        plugins.set_overrides(application, plugin_id, json.overrides, g.api_user)
    if json.enabled is not None:
        plugins.set_link_enabled(application, plugin_id, json.enabled, g.api_user)
    if json.move is not None:
        plugins.move(application, plugin_id, json.move, g.api_user)
    return _chain_out(application)


@bp.delete("/applications/<application_id>/plugins/<int:plugin_id>")
@spec.validate(resp=Response("HTTP_204", **ERRORS), tags=PLUGINS)
def detach_plugin(application_id, plugin_id):
    """Detach a plugin from the application (live on a running one)."""
    plugins.detach(visible_application(application_id), plugin_id, g.api_user)
    return "", 204
