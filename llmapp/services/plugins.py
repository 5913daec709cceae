"""Plugins: configured instances of the plugin types (llmapp/runtime/plugins), their sharing and rules.

Sharing: a member sees and changes their own plugins and sees the plugins admins have published
(to attach them; only admins change those). An admin sees and changes every plugin. A plugin another
member can't see answers as if it did not exist (NotFound). A plugin that a running application uses
can't be disabled or deleted; the refusal names those applications. Secret settings (the webhook's
signing secret) are stored encrypted and never shown again; left empty in an edit, they are kept.
"""

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from .. import secrets_box
from ..extensions import db
from ..models import Application, ApplicationPlugin, Plugin, User
from ..runtime import plugins as plugin_types
from . import Conflict, Invalid, NotFound, lifecycle

LIVE = (lifecycle.RUNNING, lifecycle.DEPLOYING)


class ConfigInvalid(Invalid):
    """The configuration breaks its type's schema: ``errors`` per setting ("" for the whole)."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("The configuration has errors.", "config")
        self.errors = errors


def visible_to(user: User):
    query = select(Plugin)
    if not user.is_admin:
        query = query.where(or_(Plugin.created_by_id == user.id, Plugin.published.is_(True)))
    return query


def search(user: User, q: str = "", type_name: str = "", enabled: str = "") -> list[Plugin]:
    query = visible_to(user)
    if q:
        query = query.where(Plugin.name.icontains(q.strip(), autoescape=True))
    if type_name in plugin_types.TYPES:
        query = query.where(Plugin.type == type_name)
    if enabled in ("yes", "no"):
        query = query.where(Plugin.enabled.is_(enabled == "yes"))
    return list(db.session.scalars(query.order_by(func.lower(Plugin.name), Plugin.id)))


def get_for_user(plugin_id: int, user: User) -> Plugin:
    """:raise NotFound: no such plugin, or one ``user`` can't see (the two look the same)."""
    plugin = db.session.scalar(visible_to(user).where(Plugin.id == plugin_id))
    if plugin is None:
        raise NotFound("No such plugin.")
    return plugin


def may_change(plugin: Plugin, user: User) -> bool:
    return user.is_admin or plugin.created_by_id == user.id


def _clean(data: dict, user: User, stored: dict | None = None) -> dict:
    """The plugin's fields from ``data``, checked.

    :raise Invalid: a field breaks a rule (``field`` says which).
    :raise ConfigInvalid: the configuration breaks its type's schema.
    """
    name = (data.get("name") or "").strip()
    if not name:
        raise Invalid("Name is required.", "name")
    if len(name) > 100:
        raise Invalid("At most 100 characters.", "name")
    type_name = data.get("type")
    if type_name not in plugin_types.TYPES:
        raise Invalid("Choose a plugin type.", "type")
    config = dict(data.get("config") or {})
    secrets = plugin_types.secret_settings(type_name)
    for setting in secrets:  # a secret left empty keeps the one stored
        if not config.get(setting) and (stored or {}).get(setting):
            config[setting] = secrets_box.decrypt(stored[setting])
    errors = plugin_types.config_errors(type_name, config)
    if errors:
        raise ConfigInvalid(errors)
    for setting in secrets:
        if config.get(setting):
            config[setting] = secrets_box.encrypt(config[setting])
    return {
        "name": name,
        "type": type_name,
        "description": (data.get("description") or "").strip()[:2000],
        "version": (data.get("version") or "").strip()[:32],
        "config": config,
        "enabled": bool(data.get("enabled", True)),
        "published": bool(data.get("published")) and user.is_admin,
    }


def create(user: User, data: dict) -> Plugin:
    """:raise Invalid, ConfigInvalid: see _clean; the owner already has a plugin of that name."""
    plugin = Plugin(created_by_id=user.id, **_clean(data, user))
    db.session.add(plugin)
    _commit_or_name_taken(plugin.name)
    return plugin


def update(plugin: Plugin, user: User, data: dict) -> Plugin:
    """:raise NotFound: ``user`` may not change it. :raise Conflict: see set_enabled."""
    if not may_change(plugin, user):
        raise NotFound("Only its owner or an admin can change this plugin.")
    values = _clean(data, user, stored=plugin.config if data.get("type") == plugin.type else None)
    if not values["enabled"] and plugin.enabled:
        _refuse_if_live(plugin, "disabled")
    if not user.is_admin:
        values["published"] = plugin.published
    for key, value in values.items():
        setattr(plugin, key, value)
    _commit_or_name_taken(plugin.name)
    return plugin


def set_enabled(plugin: Plugin, user: User, enabled: bool) -> None:
    """:raise Conflict: disabling a plugin that a running application uses."""
    if not may_change(plugin, user):
        raise NotFound("Only its owner or an admin can change this plugin.")
    if not enabled:
        _refuse_if_live(plugin, "disabled")
    plugin.enabled = enabled
    db.session.commit()


def delete(plugin: Plugin, user: User) -> None:
    """:raise Conflict: a running application uses it, or any application has it attached."""
    if not may_change(plugin, user):
        raise NotFound("Only its owner or an admin can change this plugin.")
    _refuse_if_live(plugin, "deleted")
    attached = users_of(plugin)
    if attached:
        raise Conflict(f"“{plugin.name}” is attached to {_names(attached)}: detach it there first, then delete it.")
    db.session.delete(plugin)
    db.session.commit()


def users_of(plugin: Plugin, statuses=None) -> list[Application]:
    """The applications it is attached to (only those in ``statuses`` when given), by name."""
    query = (
        select(Application)
        .join(ApplicationPlugin, ApplicationPlugin.application_id == Application.id)
        .where(ApplicationPlugin.plugin_id == plugin.id)
        .order_by(Application.name)
    )
    if statuses:
        query = query.where(Application.status.in_(statuses))
    return list(db.session.scalars(query))


def _names(applications: list[Application]) -> str:
    return ", ".join(f"“{a.name}”" for a in applications)


def _refuse_if_live(plugin: Plugin, verb: str) -> None:
    live = users_of(plugin, LIVE)
    if live:
        one = len(live) == 1
        raise Conflict(
            f"“{plugin.name}” can't be {verb} while {_names(live)} use{'s' if one else ''} it: "
            f"stop {'it' if one else 'them'} first."
        )


def _commit_or_name_taken(name: str) -> None:
    try:
        db.session.commit()
    except IntegrityError as e:
        db.session.rollback()
        raise Invalid(f"You already have a plugin named “{name}”.", "name") from e

