from flask import abort, flash, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from ..runtime import plugins as plugin_types
from ..services import Invalid, NotFound, ServiceError, plugin_documents, plugins
from ..web import redirect_to, render, wants_fragment
from . import bp, config_form
from .forms import PluginForm


@bp.before_request
@login_required
def require_login():
    """Every plugin page needs a login; what a user sees and changes is the plugins service's rule."""


def get_plugin(plugin_id: int, *, to_change: bool = False):
    """A plugin the current user sees (and, ``to_change``, may change).

    :raise 404: no such plugin, or one they can't see. :raise Forbidden: ``to_change``, and it is an
        admin's published plugin (the 403 page).
    """
    try:
        if to_change:
            return plugins.get_changeable(plugin_id, current_user)
        return plugins.get_for_user(plugin_id, current_user)
    except NotFound:
        abort(404, _("No such plugin."))


@bp.get("/")
def index():
    """The App Center's Plugins tab: search, filter by type and enabled; the table alone for htmx."""
    q = request.args.get("q", "").strip()
    type_name, enabled = request.args.get("type", ""), request.args.get("enabled", "")
    return render(
        "plugins/index.html",
        "plugins/_table.html",
        plugins=plugins.search(current_user, q, type_name, enabled),
        q=q,
        type_name=type_name,
        enabled=enabled,
        types=plugin_types.TYPES,
    )


def _render_form(form, plugin=None, errors=None, code=200):
    type_name = form.type.data if form.type.data in plugin_types.TYPES else "system_prompt"
    if request.method == "POST":
        config = config_form.read(type_name, request.form)  # what was typed, kept
    else:
        config = plugin.config if plugin else plugin_types.defaults(type_name)
    stored = plugin.config if plugin and plugin.type == type_name else {}
    return render(
        "plugins/form.html",
        "plugins/_form.html",
        code=code,
        form=form,
        plugin=plugin,
        type=plugin_types.TYPES[type_name],
        config_fields=config_form.fields(type_name, config, errors, stored),
    )


def _save(form, plugin=None):
    data = {**form.data, "config": config_form.read(form.type.data, request.form)}
    try:
        saved = plugins.update(plugin, current_user, data) if plugin else plugins.create(current_user, data)
    except plugins.ConfigInvalid as e:
        return _render_form(form, plugin, e.errors, 422)
    except Invalid as e:
        form[e.field or "name"].errors.append(str(e))
        return _render_form(form, plugin, code=422)
    except ServiceError as e:
        form.form_errors.append(str(e))
        return _render_form(form, plugin, code=409)
    if plugin:
        flash(_("Plugin “%(name)s” saved.", name=saved.name), "success")
    else:
        flash(_("Plugin “%(name)s” created.", name=saved.name), "success")
    return redirect_to(url_for(".index"))


@bp.route("/new", methods=["GET", "POST"])
def create():
    """Create a plugin: pick a type; its configuration form follows from the type's schema."""
    form = PluginForm()
    if request.method == "GET" and request.args.get("type") in plugin_types.TYPES:
        form.type.data = request.args["type"]
    if form.validate_on_submit():
        return _save(form)
    return _render_form(form, code=422 if form.errors else 200)


@bp.get("/config-fields")
def config_fields():
    """The configuration fields of the chosen type (the form swaps them in when the type changes)."""
    type_name = request.args.get("type")
    if type_name not in plugin_types.TYPES:
        abort(404, _("No such plugin type."))
    return render_template(
        "plugins/_config_fields.html",
        type=plugin_types.TYPES[type_name],
        config_fields=config_form.fields(type_name, plugin_types.defaults(type_name)),
    )


@bp.route("/<id:plugin_id>/edit", methods=["GET", "POST"])
def edit(plugin_id):
    """Edit a plugin of one's own (any, for an admin)."""
    plugin = get_plugin(plugin_id, to_change=True)
    form = PluginForm(obj=plugin)
    if form.validate_on_submit():
        return _save(form, plugin)
    return _render_form(form, plugin, code=422 if form.errors else 200)


@bp.post("/<id:plugin_id>/enabled")
def toggle(plugin_id):
    """Enable or (enabled=0) disable a plugin; refused while a running application uses it."""
    plugin = get_plugin(plugin_id, to_change=True)
    try:
        plugins.set_enabled(plugin, current_user, request.form.get("enabled") == "1")
    except ServiceError as e:
        flash(str(e), "error")
    return redirect_to(url_for(".index"))


@bp.route("/<id:plugin_id>/delete", methods=["POST", "DELETE"])
def delete(plugin_id):
    plugin = get_plugin(plugin_id, to_change=True)
    name = plugin.name
    try:
        plugins.delete(plugin, current_user)
    except ServiceError as e:
        flash(str(e), "error")
    else:
        flash(_("Plugin “%(name)s” deleted.", name=name), "success")
    return redirect_to(url_for(".index"))


def _documents_section(plugin, error=None, code=200):
    html = render_template("plugins/_documents.html", plugin=plugin, error=error)
    if wants_fragment():
        return html, code
    if error:
        flash(error, "error")
    return redirect_to(url_for(".edit", plugin_id=plugin.id) + "#documents")


@bp.post("/<id:plugin_id>/documents")
def add_document(plugin_id):
    """Upload a text or Markdown document to a knowledge-retrieval plugin."""
    plugin = get_plugin(plugin_id, to_change=True)
    upload = request.files.get("document")
    if upload is None or not upload.filename:
        return _documents_section(plugin, _("Choose a file to upload."), 422)
    try:
        data = upload.read(plugin_documents.MAX_DOCUMENT_BYTES + 1)  # one byte more: too large is refused
        plugin_documents.add_document(plugin, current_user, upload.filename, data)
    except ServiceError as e:
        return _documents_section(plugin, str(e), 422 if isinstance(e, Invalid) else 409)
    return _documents_section(plugin)


@bp.post("/<id:plugin_id>/documents/<id:document_id>/delete")
def delete_document(plugin_id, document_id):
    plugin = get_plugin(plugin_id, to_change=True)
    try:
        plugin_documents.delete_document(plugin, current_user, document_id)
    except NotFound:
        abort(404, _("No such document."))
    except ServiceError as e:
        return _documents_section(plugin, str(e), 409)
    return _documents_section(plugin)
