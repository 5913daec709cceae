"""The audit log: every change a person or a token makes (applications and their releases, deploys and
stops; keys; plugins, their documents and attachments; the model registry; engines; users; tokens;
limits), with who, when, from which address, what, and the changed fields before and after. Secrets are
written as "changed", never as values.

Who acts is set once per entry point (``acting_as``: the pages' login, the API's token, the CLI's
operator); work nobody asked for at that moment (jobs, the reconcile) writes nothing. Changes to rows are
recorded by one session hook (``before_flush``) from each audited model's allow-list of fields, so no
service can forget one and a new column is never logged unless it is listed; what is not a row's change
(a deploy, a stop, an engine install) is recorded by its service with ``record``. An entry is written in
the same transaction as its change. Append-only: nothing here edits or deletes an entry but ``prune``,
which applies the retention setting.
"""

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app, g, has_app_context, has_request_context, request
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from ..extensions import db
from ..models import (
    AccessToken,
    ApiKey,
    Application,
    ApplicationPlugin,
    AuditEntry,
    Plugin,
    PluginDocument,
    RegistryModel,
    User,
    utcnow,
)
from .registry import FIELDS as MODEL_FIELDS  # what a registry model is made of, listed once

SECRET = "(secret)"  # what a secret's value reads as, before and after
SECRET_MARK = "\x00secret:"  # audit_view's prefix of a secret's ciphertext: diff writes it as changed or not
LIMITS = ("limit_rpm", "limit_tpm", "limit_daily_tokens", "limit_monthly_tokens")
MAX_VALUE = 500  # characters of a value kept (a long description or prompt is cut, with a mark)
PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class Actor:
    user_id: int | None
    label: str  # "ann@example.org", "token ci (ann@example.org)", "operator (command line)"
    address: str


def acting_as(user, address: str, token_name: str | None = None) -> None:
    """Who makes this request's changes: a logged-in User, or the User a token acts as."""
    label = f"token {token_name} ({user.email})" if token_name else user.email
    g.audit_actor = Actor(user.id, label, address)


_command_actor: ContextVar[Actor | None] = ContextVar("audit_command_actor", default=None)


@contextlib.contextmanager
def operator_acting():
    """A command of the CLI: the operator acts (there is no request, and maybe no app context yet)."""
    token = _command_actor.set(Actor(None, "operator (command line)", "local"))
    try:
        yield
    finally:
        _command_actor.reset(token)


def current_actor() -> Actor | None:
    """Who acts now: the request's person or token, the command's operator; None for a job's work."""
    actor = g.get("audit_actor") if has_app_context() else None
    if actor is None and has_request_context() and request.blueprint != "api":
        from flask_login import current_user  # a page's login, looked up when a change is written

        if current_user and current_user.is_authenticated:
            actor = g.audit_actor = Actor(current_user.id, current_user.email, request_address())
    return actor or _command_actor.get()


def request_address() -> str:
    return (request.remote_addr or "") if has_request_context() else "local"


@dataclass(frozen=True)
class Audited:
    """How a model's rows are logged: the kind of change (``kind``.create/update/delete), its fields (an
    allow-list), its secrets, the object it is about (type, id, name) and whose that is (who may read its
    entries besides the admins)."""

    kind: str
    fields: tuple[str, ...]
    about: callable  # row → (object type, object id, object name)
    owner: callable  # row → a user id, or None (admins only)
    secrets: callable = lambda row: ()
    skip: callable = lambda row: False


def _application(row) -> Application | None:
    return db.session.get(Application, row.application_id)


def _owner_of_application(row) -> int | None:
    application = _application(row)
    return application.created_by_id if application else None


def _in_application(what: callable):
    """A row about its application: the application's id, and "its name · what"."""

    def about(row):
        application = _application(row)
        return "application", str(row.application_id), f"{application.name if application else '?'} · {what(row)}"

    return about


def _plugin_owner(row) -> int | None:
    plugin = db.session.get(Plugin, row.plugin_id)
    return plugin.created_by_id if plugin else None


def _plugin_name(row) -> str:
    plugin = db.session.get(Plugin, row.plugin_id)
    return plugin.name if plugin else "?"


def _plugin_secrets(row) -> tuple[str, ...]:
    """The config is secret when the plugin's type has secret settings, now or before this change (a
    type changed away from one with a secret must not show the old secret's ciphertext)."""
    from ..runtime import plugins as plugin_types

    types = {row.type, *inspect(row).attrs.type.history.deleted}
    return ("config",) if any(t in plugin_types.TYPES and plugin_types.secret_settings(t) for t in types) else ()


AUDITED = {
    Application: Audited(
        "application",
        ("name", "description", "model_id", "config", *LIMITS),
        lambda r: ("application", str(r.id), r.name),
        lambda r: r.created_by_id,
    ),
    ApiKey: Audited(
        "key",
        ("label", "prefix", "expires_at", "revoked_at", *LIMITS),
        lambda r: ("key", str(r.id), f"{(_application(r) or Application(name='?')).name} · {r.label or r.prefix}"),
        _owner_of_application,
        skip=lambda r: r.purpose != "user",  # the playground's own keys come and go with its use
    ),
    Plugin: Audited(
        "plugin",
        ("name", "type", "description", "config", "enabled", "published"),
        lambda r: ("plugin", str(r.id), r.name),
        lambda r: r.created_by_id,
        secrets=_plugin_secrets,
    ),
    PluginDocument: Audited(
        "document",
        ("name", "size"),
        lambda r: (
            "plugin",
            str(r.plugin_id),
            f"{_plugin_name(r)} · {r.name}",
        ),
        _plugin_owner,
    ),
    ApplicationPlugin: Audited(
        "attachment",
        ("plugin_id", "position", "config", "enabled"),
        _in_application(_plugin_name),
        _owner_of_application,
        secrets=lambda r: ("config",),  # an override may hold a plugin's setting: its values stay out
    ),
    RegistryModel: Audited(
        "model",
        MODEL_FIELDS,
        lambda r: ("model", str(r.id), r.name),
        lambda r: None,
    ),  # fmt: skip
    User: Audited(
        "user",
        ("email", "is_admin", "disabled_at", "password_hash", *LIMITS),
        lambda r: ("user", str(r.id), r.email),
        lambda r: r.id,
        secrets=lambda r: ("password_hash",),
    ),
    AccessToken: Audited(
        "token",
        ("name", "prefix", "expires_at", "revoked_at"),
        lambda r: ("token", str(r.id), r.name),
        lambda r: r.user_id,
    ),
}


def _value(value):
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, str) and len(value) > MAX_VALUE:
        return value[:MAX_VALUE] + "…"
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)


def _changes(row, audited: Audited, created: bool) -> dict:
    state, secrets, changes = inspect(row), set(audited.secrets(row)), {}
    for field in audited.fields:
        history = state.attrs[field].history
        if created:
            after = getattr(row, field)
            if after not in (None, "", {}, [], False):
                changes[field] = [None, SECRET if field in secrets else _value(after)]
        elif history.has_changes():
            before = history.deleted[0] if history.deleted else None
            after = history.added[0] if history.added else None
            if before == after:
                continue
            changes[field] = ["changed", "changed"] if field in secrets else [_value(before), _value(after)]
    return changes


@event.listens_for(Session, "after_flush")
def _log_row_changes(session, flush_context) -> None:
    """Each audited row the flush wrote (ids assigned, the history still there), as an entry to add once
    the flush is done (a commit flushes again until nothing is left)."""
    actor = current_actor()
    if actor is None:
        return
    pending = session.info.setdefault("audit_pending", [])
    with session.no_autoflush:
        for rows, verb in ((session.new, "create"), (session.dirty, "update"), (session.deleted, "delete")):
            for row in list(rows):
                audited = AUDITED.get(type(row))
                if audited is None or audited.skip(row):
                    continue
                changes = _changes(row, audited, verb == "create") if verb != "delete" else {}
                if verb == "create" and isinstance(row, Application):  # its variables come with it
                    changes["env"] = [None, _env(row.env_vars)]
                if verb == "update" and not changes:
                    continue  # only columns nobody audits changed (a status, a time last used)
                pending.append(_entry(actor, f"{audited.kind}.{verb}", audited.about(row), audited.owner(row), changes))


@event.listens_for(Session, "after_flush_postexec")
def _add_entries(session, flush_context) -> None:
    pending = session.info.pop("audit_pending", None)
    if pending:
        session.add_all(pending)


def _entry(actor: Actor, action: str, about: tuple, owner_id, changes: dict) -> AuditEntry:
    object_type, object_id, object_name = about
    return AuditEntry(
        actor_id=actor.user_id,
        actor=actor.label[:300],
        address=actor.address[:64],
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_name=str(object_name)[:200],
        owner_id=owner_id,
        changes=changes,
    )


def _env(variables) -> dict:
    return {var.name: SECRET if var.is_secret else _value(var.value) for var in variables}


def application_view(application, env: list) -> dict:
    """An application's fields as its audit entries compare them (a secret variable as its ciphertext,
    which audit.diff writes as changed or not, never as a value)."""
    return {
        "name": application.name,
        "description": application.description,
        "model_id": application.model_id,
        "config": application.config,
        "env": {var.name: (SECRET_MARK + var.value if var.is_secret else var.value) for var in env},
    }


def diff(before: dict, after: dict) -> dict:
    """The fields that differ, as (before, after); within "env", each variable that was added, removed or
    changed, a secret one as "changed" (its ciphertexts compared, never shown)."""
    changes = {}
    for field in before.keys() | after.keys():
        old, new = before.get(field), after.get(field)
        if field == "env":
            for name in sorted(old.keys() | new.keys()):
                a, b = old.get(name), new.get(name)
                if a != b:
                    secret = any(str(v).startswith(SECRET_MARK) for v in (a, b) if v is not None)
                    shown = [None if v is None else ("changed" if secret else v) for v in (a, b)]
                    changes[f"env.{name}"] = shown
        elif old != new:
            changes[field] = (old, new)
    return changes


def record(action: str, target, changes: dict | None = None) -> None:
    """An action that is not a row's change (``application.deploy``, ``engine.install``…), added to the
    session: its service commits it with what it did. ``target``: an audited row, or ("engine", name)."""
    actor = current_actor()
    if actor is None:
        return
    if isinstance(target, tuple):
        about, owner_id = (target[0], target[1], target[1]), None
    else:
        audited = AUDITED[type(target)]
        about, owner_id = audited.about(target), audited.owner(target)
    values = {field: [_value(before), _value(after)] for field, (before, after) in (changes or {}).items()}
    db.session.add(_entry(actor, action, about, owner_id, values))


@dataclass(frozen=True)
class Filters:
    actor: str = ""  # part of who acted (an e-mail, a token's name)
    object_type: str = ""
    object_id: str = ""
    action: str = ""  # an action, or its start ("application." for all of an application's)
    days: int | None = None  # the last N days
    before_id: int | None = None  # the page after this entry
    limit: int = PAGE

    def __post_init__(self):
        for name in ("actor", "object_type", "object_id", "action"):  # no stored text holds a NUL
            object.__setattr__(self, name, getattr(self, name).replace("\x00", ""))


def entries(acting, filters: Filters) -> list[AuditEntry]:
    """The newest entries that match, newest first: an admin's of everything, a member's of entries
    about their own objects (their applications, keys, plugins, tokens and account)."""
    query = db.select(AuditEntry)
    if not acting.is_admin:
        query = query.where(AuditEntry.owner_id == acting.id)
    if filters.actor:
        query = query.where(AuditEntry.actor.contains(filters.actor, autoescape=True))
    if filters.object_type:
        query = query.where(AuditEntry.object_type == filters.object_type)
    if filters.object_id:
        query = query.where(AuditEntry.object_id == filters.object_id)
    if filters.action:
        query = query.where(AuditEntry.action.startswith(filters.action, autoescape=True))
    if filters.days:
        query = query.where(AuditEntry.at >= utcnow() - timedelta(days=filters.days))
    if filters.before_id:
        query = query.where(AuditEntry.id < filters.before_id)
    limit = max(1, min(filters.limit, MAX_PAGE))
    return list(db.session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))


def as_dict(entry: AuditEntry) -> dict:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(timespec="seconds") + "Z",
        "actor": entry.actor,
        "actor_id": entry.actor_id,
        "address": entry.address,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "object_name": entry.object_name,
        "changes": entry.changes,
    }


def prune() -> int:
    """Delete entries older than the retention setting (AUDIT_RETENTION_DAYS; 0 keeps them all)."""
    days = current_app.config["AUDIT_RETENTION_DAYS"]
    if not days:
        return 0
    deleted = db.session.execute(db.delete(AuditEntry).where(AuditEntry.at < utcnow() - timedelta(days=days)))
    db.session.commit()
    return deleted.rowcount or 0


OBJECT_TYPES = ("application", "key", "plugin", "plugin document", "model", "user", "token", "engine")
