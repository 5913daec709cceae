"""/api/v1/plugin-types and /api/v1/plugins: the plugin types, your plugins and those admins published,
and the documents of a knowledge-retrieval plugin. A plugin you can't see answers 404; an admin's
published one, which you see but may not change, 403 (the plugins service's rule)."""

from flask import g, url_for
from spectree import Response

from ..runtime import plugins as plugin_types
from ..secrets_box import MASK
from ..services import plugin_documents, plugins
from . import BODY_ERRORS, ERRORS, bp, spec
from .schemas import DocumentIn, DocumentOut, PluginIn, PluginList, PluginOut, PluginQuery, PluginTypeList, Problem

PLUGINS = ["plugins"]


def _plugin_out(plugin) -> PluginOut:
    secrets = set(plugin_types.secret_settings(plugin.type))
    config = {k: (MASK if k in secrets and v else v) for k, v in (plugin.config or {}).items()}
    return PluginOut(
        id=plugin.id,
        name=plugin.name,
        type=plugin.type,
        description=plugin.description,
        version=plugin.version,
        config=config,
        enabled=plugin.enabled,
        published=plugin.published,
        owner=plugin.owner.email if plugin.owner else None,
        documents=[_document_out(d) for d in plugin.documents],
    )


@bp.get("/plugin-types")
@spec.validate(resp=Response(HTTP_200=PluginTypeList, **ERRORS), tags=PLUGINS)
def list_plugin_types():
    """The five plugin types and the JSON Schema of each one's configuration."""
    return PluginTypeList(
        items=[
            {"name": t.name, "title": t.title, "description": t.description, "config_schema": t.schema}
            for t in plugin_types.TYPES.values()
        ]
    )


@bp.get("/plugins")
@spec.validate(query=PluginQuery, resp=Response(HTTP_200=PluginList, **ERRORS), tags=PLUGINS)
def list_plugins(query: PluginQuery):
    """Your plugins and those admins published (every plugin, for an admin)."""
    found = plugins.search(g.api_user, query.q, query.type, query.enabled)
    return PluginList(items=[_plugin_out(p) for p in found])


@bp.post("/plugins")
@spec.validate(json=PluginIn, resp=Response(HTTP_201=PluginOut, HTTP_409=Problem, **BODY_ERRORS), tags=PLUGINS)
def create_plugin(json: PluginIn):
    """Create a plugin; its configuration is checked against its type's schema (errors at config.<setting>)."""
    plugin = plugins.create(g.api_user, json.model_dump())
    return _plugin_out(plugin), 201, {"Location": url_for(".get_plugin", plugin_id=plugin.id)}


@bp.get("/plugins/<int:plugin_id>")
@spec.validate(resp=Response(HTTP_200=PluginOut, **ERRORS), tags=PLUGINS)
def get_plugin(plugin_id):
    """One plugin (a secret setting masked)."""
    return _plugin_out(plugins.get_for_user(plugin_id, g.api_user))


@bp.put("/plugins/<int:plugin_id>")
@spec.validate(
    json=PluginIn, resp=Response(HTTP_200=PluginOut, HTTP_403=Problem, HTTP_409=Problem, **BODY_ERRORS), tags=PLUGINS
)
def update_plugin(plugin_id, json: PluginIn):
    """Replace a plugin's fields (a secret setting left out keeps its value); running applications that
    use it get the change live. Disabling it while one runs is refused (409, naming them)."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    return _plugin_out(plugins.update(plugin, g.api_user, json.model_dump()))


@bp.delete("/plugins/<int:plugin_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_403=Problem, HTTP_409=Problem, **ERRORS), tags=PLUGINS)
def delete_plugin(plugin_id):
    """Delete a plugin; refused (409) while an application has it attached."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    plugins.delete(plugin, g.api_user)
    return "", 204


@bp.post("/plugins/<int:plugin_id>/documents")
@spec.validate(
    json=DocumentIn,
    resp=Response(HTTP_201=DocumentOut, HTTP_403=Problem, HTTP_409=Problem, **BODY_ERRORS),
    tags=PLUGINS,
)
def add_document(plugin_id, json: DocumentIn):
    """Add a text or Markdown document to a knowledge-retrieval plugin (409 for a plugin of another type,
    or a name it already has)."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    document = plugin_documents.add_document(plugin, g.api_user, json.name, json.text.encode())
    location = url_for(".delete_document", plugin_id=plugin.id, document_id=document.id)
    return _document_out(document), 201, {"Location": location}


def _document_out(document) -> dict:
    return {"id": document.id, "name": document.name, "size": document.size}


@bp.delete("/plugins/<int:plugin_id>/documents/<int:document_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_403=Problem, **ERRORS), tags=PLUGINS)
def delete_document(plugin_id, document_id):
    """Delete a document of a knowledge-retrieval plugin."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    plugin_documents.delete_document(plugin, g.api_user, document_id)
    return "", 204
