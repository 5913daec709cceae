"""An application's plugin chain on its detail page: attach, order, override, enable, detach.

Every action answers the Plugins section (htmx swaps it), or redirects to the detail page without
htmx. Changes reach a running server live (services/plugins.py says how).
"""

from flask import abort, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from ..plugins import config_form
from ..runtime import plugins as plugin_types
from ..services import NotFound, ServiceError, plugins
from ..web import bounded_int, redirect_to, wants_fragment
from . import bp
from .routes import get_application


def chain_section(application, error=None, editing=None, override_errors=None, code=200):
    """The Plugins section; ``editing``: the plugin whose overrides form is open."""
    links = plugins.chain(application)
    forms = {}
    for link in links:
        if link.plugin_id == editing:
            typed = config_form.read(link.plugin.type, request.form) if override_errors else None
            forms[link.plugin_id] = override_fields(link, typed, override_errors)
    html = render_template(
        "applications/_plugins.html",
        application=application,
        links=links,
        attachable=plugins.attachable(application, current_user),
        types=plugin_types.TYPES,
        error=error,
        override_forms=forms,
    )
    return html, code


def override_fields(link, typed=None, errors=None):
    """The form fields of the settings an application may override, showing its values."""
    allowed = plugins.overridable(link.plugin.type)
    values = typed if typed is not None else plugins.effective_config(link)
    return [f for f in config_form.fields(link.plugin.type, values, errors) if f.name in allowed]


def _answer(application, **kwargs):
    if wants_fragment():
        return chain_section(application, **kwargs)
    return redirect_to(url_for(".detail", application_id=application.id) + "#plugins")


def _plugin_id():
    plugin_id = bounded_int(request.form.get("plugin_id"))
    if plugin_id is None:
        abort(400, _("Choose a plugin."))
    return plugin_id


@bp.get("/<application_id>/plugins")
def chain(application_id):
    application = get_application(application_id)
    editing = bounded_int(request.args.get("edit"))
    return chain_section(application, editing=editing)


@bp.post("/<application_id>/plugins")
def attach(application_id):
    application = get_application(application_id)
    try:
        plugins.attach(application, current_user, _plugin_id())
    except NotFound:
        return _answer(application, error=_("No such plugin, or you can't use it."))
    except ServiceError as e:
        return _answer(application, error=str(e))
    return _answer(application)


@bp.post("/<application_id>/plugins/<id:plugin_id>/<action>")
def change(application_id, plugin_id, action):
    """move (direction=up|down), enabled (enabled=1|0), detach, overrides (the settings' fields; reset=1)."""
    application = get_application(application_id)
    try:
        if action == "move":
            plugins.move(application, plugin_id, request.form.get("direction", ""), current_user)
        elif action == "enabled":
            plugins.set_link_enabled(application, plugin_id, request.form.get("enabled") == "1", current_user)
        elif action == "detach":
            plugins.detach(application, plugin_id, current_user)
        elif action == "overrides":
            return _save_overrides(application, plugin_id)
        else:
            abort(404)
    except ServiceError as e:
        return _answer(application, error=str(e))
    return _answer(application)


def _save_overrides(application, plugin_id):
    link = next((link for link in plugins.chain(application) if link.plugin_id == plugin_id), None)
    if link is None:
        raise NotFound(_("That plugin is not attached to this application."))
    overrides = {}
    if request.form.get("reset") != "1":
        typed = config_form.read(link.plugin.type, request.form)
        overrides = {name: value for name, value in typed.items() if name in plugins.overridable(link.plugin.type)}
    try:
        plugins.set_overrides(application, plugin_id, overrides, current_user)
    except plugins.ConfigInvalid as e:
        return chain_section(application, editing=plugin_id, override_errors=e.errors, code=422)
    return _answer(application)
