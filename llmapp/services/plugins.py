"""Plugins: configured instances of the plugin types (llmapp/runtime/plugins), their sharing and rules.

Sharing: a member sees and changes their own plugins and sees the plugins admins have published
(to attach them; only admins change those: Forbidden). An admin sees and changes every plugin, and
only an admin publishes one (a member's "published" is ignored). A plugin another member can't see
answers as if it did not exist (NotFound). A plugin that a running application uses
can't be disabled or deleted; the refusal names those applications. Secret settings (the webhook's
signing secret) are stored encrypted and never shown again; left empty in an edit, they are kept.

Chains: the plugins attached to an application, in order, each with the application's overrides of
its configuration and on or off there. Every change reaches a running application's server live: the
chain is published to Redis (encrypted with the application's own key, runtime/plugins/published.py)
before the change is committed, and the server swaps it in between requests; when Redis is
unreachable nothing changes, and the user is told so. Each change is a release (services/releases.py).

Destinations: a setting that decides where a plugin's data goes (a webhook's URL) must point where
llmapp/netguard.py allows, checked at every save (the app server checks again on every connection).
An application can't override it on a plugin that isn't its owner's (a published one: its secret
would sign what goes where the application's owner chose); such an override stored before is ignored.

Documents (a knowledge-retrieval plugin's) are services/plugin_documents.py's."""

import hashlib
import json

from flask import current_app
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from .. import netguard, queues, secrets_box
from ..extensions import db
from ..i18n import _l
from ..models import MAX_ID, Application, ApplicationPlugin, Plugin, User
from ..runtime import plugins as plugin_types
from ..runtime.plugins import published
from . import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ServiceError,
    Taken,
    lifecycle,
    listing,
    publish_before_commit,
    releases,
)

LIVE = (lifecycle.RUNNING, lifecycle.DEPLOYING)
DESTINATIONS = {"webhook_audit": ("url",)}  # per type: the settings that decide where its data goes
NOT_YOURS = _l("Only its owner or an admin can change this plugin.")
MAX_NAME = 100
REQUIRED = ("name", "type")  # what a plugin must be given


class ConfigInvalid(Invalid):
    """The configuration breaks its type's schema: ``errors`` per setting ("" for the whole)."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(_("The configuration has errors."), "config")
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
    if not 1 <= plugin_id <= MAX_ID:  # names nothing (and would overflow the column)
        raise NotFound(_("No such plugin."))
    plugin = db.session.scalar(visible_to(user).where(Plugin.id == plugin_id))
    if plugin is None:
        raise NotFound(_("No such plugin."))
    return plugin


def may_change(plugin: Plugin, user: User) -> bool:
    """Whether ``user`` may change (or delete) ``plugin``: theirs, or they are an admin."""
    return user.is_admin or plugin.created_by_id == user.id


def require_change(plugin: Plugin, user: User) -> None:
    """:raise Forbidden: ``user`` sees ``plugin`` (an admin's published one) but may not change it."""
    if not may_change(plugin, user):
        raise Forbidden(str(NOT_YOURS))


def get_changeable(plugin_id: int, user: User) -> Plugin:
    """A plugin ``user`` may change.

    :raise NotFound: no such plugin, or one ``user`` can't see. :raise Forbidden: one they see but may
        not change (an admin's published plugin).
    """
    plugin = get_for_user(plugin_id, user)
    require_change(plugin, user)
    return plugin


def _clean(data: dict, user: User, stored: dict | None = None) -> dict:
    """The plugin's fields from ``data``, checked.

    :raise Invalid: a field breaks a rule (``field`` says which).
    :raise ConfigInvalid: the configuration breaks its type's schema.
    """
    typed = data.get("name") or ""
    name = typed.strip()
    if not name:
        raise Invalid(_("Name is required."), "name")
    if len(typed) > MAX_NAME:  # as typed: the API's document bounds what is sent
        raise Invalid(_("At most %(count)s characters.", count=MAX_NAME), "name")
    type_name = data.get("type")
    if type_name not in plugin_types.TYPES:
        raise Invalid(_("Choose a plugin type."), "type")
    config = dict(data.get("config") or {})
    secrets = plugin_types.secret_settings(type_name)
    for setting in secrets:  # a secret left empty keeps the one stored
        if not config.get(setting) and (stored or {}).get(setting):
            config[setting] = secrets_box.decrypt(stored[setting])
    errors = config_errors(type_name, config)
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


def config_errors(type_name: str, config: dict) -> dict[str, list[str]]:
    """The type's schema errors, then those of its destinations (netguard), per setting."""
    errors = plugin_types.config_errors(type_name, config)
    guard = netguard.Guard.from_setting(current_app.config.get("WEBHOOK_ALLOWED_DESTINATIONS"))
    for setting in DESTINATIONS.get(type_name, ()):
        value = config.get(setting)
        if setting not in errors and isinstance(value, str) and (message := guard.url_error(value)):
            errors[setting] = [message]
    return errors


def create(user: User, data: dict) -> Plugin:
    """:raise Invalid, ConfigInvalid: see _clean; the owner already has a plugin of that name."""
    plugin = Plugin(created_by_id=user.id, **_clean(data, user))
    db.session.add(plugin)
    _commit_or_name_taken(plugin.name)
    return plugin


def update(plugin: Plugin, user: User, data: dict) -> Plugin:
    """:raise Forbidden: ``user`` may not change it. :raise Invalid, ConfigInvalid: see _clean. :raise
    Conflict: see set_enabled."""
    require_change(plugin, user)
    values = _clean(data, user, stored=plugin.config if data.get("type") == plugin.type else None)
    if not values["enabled"] and plugin.enabled:
        _refuse_if_live(plugin, "disabled")
    if not user.is_admin:
        values["published"] = plugin.published
    releases.begin(*users_of(plugin))  # their setups before this change, for those from before releases
    for key, value in values.items():
        setattr(plugin, key, value)
    _commit_or_name_taken(
        plugin.name, before=lambda: publish_chains_before_commit(users_of(plugin, LIVE), _("The plugin was not saved"))
    )
    releases.record_live(
        users_of(plugin), user, releases.note("plugin changed", name=plugin.name)
    )  # their setups changed
    return plugin


def set_enabled(plugin: Plugin, user: User, enabled: bool) -> None:
    """:raise Forbidden: ``user`` may not change it. :raise Conflict: disabling a plugin that a running
    application uses."""
    require_change(plugin, user)
    if not enabled:
        _refuse_if_live(plugin, "disabled")
    releases.begin(*users_of(plugin))
    plugin.enabled = enabled
    db.session.commit()
    releases.record_live(
        users_of(plugin), user, releases.note("plugin on" if enabled else "plugin off", name=plugin.name)
    )


def delete(plugin: Plugin, user: User) -> None:
    """:raise Forbidden: ``user`` may not change it. :raise Conflict: a running application uses it, or
    any application has it attached."""
    require_change(plugin, user)
    _refuse_if_live(plugin, "deleted")
    attached = users_of(plugin)
    if attached:
        raise Conflict(
            _(
                "“%(name)s” is attached to %(applications)s: detach it there first, then delete it.",
                name=plugin.name,
                applications=_names(attached),
            )
        )
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
    return listing(f"“{a.name}”" for a in applications)


def _refuse_if_live(plugin: Plugin, verb: str) -> None:
    """``verb``: "disabled" or "deleted" (what was asked)."""
    live = users_of(plugin, LIVE)
    if not live:
        return
    values = {"name": plugin.name, "applications": _names(live)}
    if verb == "disabled":
        message = ngettext(
            "“%(name)s” can't be disabled while %(applications)s uses it: stop it first.",
            "“%(name)s” can't be disabled while %(applications)s use it: stop them first.",
            len(live),
            **values,
        )
    else:
        message = ngettext(
            "“%(name)s” can't be deleted while %(applications)s uses it: stop it first.",
            "“%(name)s” can't be deleted while %(applications)s use it: stop them first.",
            len(live),
            **values,
        )
    raise Conflict(message)


def _commit_or_name_taken(name: str, before=None) -> None:
    """Commit; ``before`` (publishing to the servers) flushes first, which is where a name another plugin
    of the owner's holds meets the database's unique index, as it would at the commit."""
    try:
        if before is not None:
            before()
        db.session.commit()
    except IntegrityError as e:
        db.session.rollback()
        raise Taken({"name": [_("You already have a plugin named “%(name)s”.", name=name)]}) from e


# --- an application's chain ---------------------------------------------------------------------


def chain(application: Application) -> list[ApplicationPlugin]:
    """The plugins attached to the application, in their order."""
    return list(
        db.session.scalars(
            select(ApplicationPlugin)
            .where(ApplicationPlugin.application_id == application.id)
            .order_by(ApplicationPlugin.position, ApplicationPlugin.plugin_id)
        )
    )


def attachable(application: Application, user: User) -> list[Plugin]:
    """What ``user`` may add to the application's chain: enabled plugins they see, not attached yet."""
    attached = select(ApplicationPlugin.plugin_id).where(ApplicationPlugin.application_id == application.id)
    query = visible_to(user).where(Plugin.enabled.is_(True), Plugin.id.not_in(attached))
    return list(db.session.scalars(query.order_by(func.lower(Plugin.name), Plugin.id)))


def choosable(application: Application | None, user: User) -> list[Plugin]:
    """What the application form offers: the plugins attached now, then those ``user`` may attach."""
    attached = [link.plugin for link in chain(application)] if application else []
    return attached + (attachable(application, user) if application else search(user, enabled="yes"))


def set_attached(application: Application, user: User, plugin_ids: list[int]) -> None:
    """The application form's choice: detach what is not chosen, attach what is new at the end (in the
    order given); what stays keeps its place, its overrides and its on/off."""
    chosen = list(dict.fromkeys(plugin_ids))
    for link in chain(application):
        if link.plugin_id not in chosen:
            detach(application, link.plugin_id)
    attached = {link.plugin_id for link in chain(application)}
    for plugin_id in chosen:
        if plugin_id not in attached:
            attach(application, user, plugin_id)


def attached(application: Application, plugin_id: int) -> ApplicationPlugin:
    """The plugin's place in the application's chain.

    :raise NotFound: it is not attached there (an id out of the database's range names none).
    """
    found = db.session.get(ApplicationPlugin, (application.id, plugin_id)) if 1 <= plugin_id <= MAX_ID else None
    if found is None:
        raise NotFound(_("That plugin is not attached to this application."))
    return found


def attach(application: Application, user: User, plugin_id: int) -> ApplicationPlugin:
    """Add a plugin the user can see at the end of the chain.

    :raise NotFound: no such plugin for ``user``. :raise Conflict: disabled, or attached already.
    """
    releases.begin(application)  # each chain change below: the setup before it, for one from before releases
    plugin = get_for_user(plugin_id, user)
    if not plugin.enabled:
        raise Conflict(_("“%(name)s” is disabled: enable it on the Plugins tab first.", name=plugin.name))
    if db.session.get(ApplicationPlugin, (application.id, plugin.id)) is not None:
        raise Conflict(_("“%(name)s” is attached already.", name=plugin.name))
    last = db.session.scalar(
        select(func.max(ApplicationPlugin.position)).where(ApplicationPlugin.application_id == application.id)
    )
    link = ApplicationPlugin(application=application, plugin=plugin, position=(last or 0) + 1, config={})
    db.session.add(link)
    _apply(
        application,
        _("“%(name)s” was not attached", name=plugin.name),
        user,
        releases.note("attached", name=plugin.name),
    )
    return link


def detach(application: Application, plugin_id: int, author: User | None = None) -> None:
    releases.begin(application)
    link = attached(application, plugin_id)
    name = link.plugin.name
    db.session.delete(link)
    _apply(application, _("“%(name)s” was not detached", name=name), author, releases.note("detached", name=name))


def move(application: Application, plugin_id: int, direction: str, author: User | None = None) -> None:
    """One place earlier ("up") or later ("down") in the chain; at an end, nothing changes."""
    releases.begin(application)
    links = chain(application)
    at = next((i for i, link in enumerate(links) if link.plugin_id == plugin_id), None)
    if at is None:
        raise NotFound(_("That plugin is not attached to this application."))
    to = at - 1 if direction == "up" else at + 1
    if direction not in ("up", "down") or not 0 <= to < len(links):
        return
    links[at], links[to] = links[to], links[at]
    moved = links[to].plugin.name
    for position, link in enumerate(links, 1):
        link.position = position
    _apply(application, _("The order was not changed"), author, releases.note(f"moved {direction}", name=moved))


def set_link_enabled(application: Application, plugin_id: int, enabled: bool, author: User | None = None) -> None:
    releases.begin(application)
    link = attached(application, plugin_id)
    link.enabled = enabled
    _apply(
        application,
        _("The change was not saved"),
        author,
        releases.note("link on" if enabled else "link off", name=link.plugin.name),
    )


def overridable(type_name: str) -> dict:
    """The settings an application may override: all but the secrets (those stay the plugin's)."""
    secrets, properties = plugin_types.secret_settings(type_name), plugin_types.TYPES[type_name].schema["properties"]
    return {name: spec for name, spec in properties.items() if name not in secrets}


def _locked(link: ApplicationPlugin) -> tuple[str, ...]:
    """The destination settings the application can't override: all of them unless the plugin is the
    application owner's own (whoever acts, the plugin's owner's secret signs what is sent)."""
    if link.plugin.created_by_id == link.application.created_by_id:
        return ()
    return DESTINATIONS.get(link.plugin.type, ())


def set_overrides(
    application: Application, plugin_id: int, overrides: dict, author: User | None = None
) -> ApplicationPlugin:
    """The application's own values of some settings of an attached plugin (the rest are the plugin's).

    :raise ConfigInvalid: a setting can't be overridden (a secret; a destination, see _locked), or the
        configuration they make breaks the type's rules (errors per setting).
    """
    releases.begin(application)
    link = attached(application, plugin_id)
    allowed = overridable(link.plugin.type)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigInvalid({name: [_("This setting can't be overridden per application.")] for name in unknown})
    base = _plugin_config(link.plugin)
    locked = [name for name in _locked(link) if name in overrides and overrides[name] != base.get(name)]
    if locked:
        message = _(
            "Where this plugin sends its data is set by its owner, for every application: "
            "use a plugin of your own to send it elsewhere."
        )
        raise ConfigInvalid({name: [message] for name in locked})
    errors = config_errors(link.plugin.type, {**base, **overrides})
    if errors:
        raise ConfigInvalid(errors)
    link.config = {name: value for name, value in overrides.items() if base.get(name) != value}
    _apply(application, _("The overrides were not saved"), author, f"Overrides of “{link.plugin.name}” changed")
    return link


def _plugin_config(plugin: Plugin) -> dict:  # over its type's defaults, secrets decrypted (for its servers only)
    config = {**plugin_types.defaults(plugin.type), **(plugin.config or {})}
    for setting in plugin_types.secret_settings(plugin.type):
        if config.get(setting):
            config[setting] = secrets_box.decrypt(config[setting])
    return config


def effective_overrides(link: ApplicationPlugin) -> dict:
    """The application's overrides, less any it may not have (stored before a rule forbade them: a
    secret, or a destination of a plugin that isn't the owner's)."""
    allowed = set(overridable(link.plugin.type)) - set(_locked(link))
    return {name: value for name, value in sorted((link.config or {}).items()) if name in allowed}


def effective_config(link: ApplicationPlugin) -> dict:  # what the server runs
    return {**_plugin_config(link.plugin), **effective_overrides(link)}


def chain_document(application: Application) -> dict:
    """What the application's server runs: its enabled links to enabled plugins, in order. The version
    is a digest of the content, so publishing an unchanged chain changes nothing on the server."""
    plugins = []
    for link in chain(application):
        if not (link.enabled and link.plugin.enabled):
            continue
        entry = {"name": link.plugin.name, "type": link.plugin.type, "config": effective_config(link)}
        if link.plugin.type == "knowledge_retrieval":
            entry["documents"] = [(document.name, document.text) for document in link.plugin.documents]
        plugins.append(entry)
    digest = hashlib.sha256(json.dumps(plugins, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"version": digest if plugins else "", "plugins": plugins}


def publish_chain(application: Application) -> None:
    """Give the application's server its chain (at deploy, and on every change while it runs).

    :raise redis.RedisError: Redis is unreachable. :raise ValueError: a secret can't be decrypted.
    """
    published.publish(
        queues.connection(), application.id, chain_document(application), secrets_box.application_key(application.id)
    )


def publish_chains_before_commit(applications: list[Application], failure: str) -> None:
    """Publish the chains of live ``applications`` with what the session holds, before it is committed."""
    if not applications:
        return

    def publish() -> None:
        try:
            for application in applications:
                publish_chain(application)
        except ValueError as e:  # a secret that can't be decrypted
            raise ServiceError(_("%(reason)s; enter the webhook's secret again.", reason=e)) from e

    publish_before_commit(publish, failure)


def _apply(application: Application, failure: str, author: User | None, note: str) -> None:
    """Commit a change of the application's chain, published first when it is live; then it is a release."""
    publish_chains_before_commit([application] if application.status in LIVE else [], failure)
    db.session.commit()
    releases.record_live([application], author, note)
