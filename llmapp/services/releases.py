"""Releases: every saved serving setup of an application, numbered from 1 and never changed.

A setup is what decides how the application's endpoint behaves: the model, the configuration, the
environment and the plugin chain with each plugin's settings. Saving one that differs from the newest
release records the next number (saving the same setup again records nothing). A secret is kept as
its stored ciphertext and a keyed fingerprint, so two releases can be compared ("changed",
"unchanged") without anyone seeing the value. The release a server runs is
``Application.deployed_release``: the newest one when its deploy reached running.
"""

import re
import unicodedata
from dataclasses import dataclass

from flask_babel import gettext as _
from flask_babel import pgettext
from sqlalchemy.exc import IntegrityError

from .. import secrets_box
from ..extensions import db
from ..i18n import NP_
from ..models import (
    MAX_ID,
    Application,
    ApplicationPlugin,
    EnvVar,
    Plugin,
    RegistryModel,
    Release,
    Replica,
    User,
    utcnow,
)
from ..runtime import plugins as plugin_types
from . import FieldErrors, NotFound, lifecycle, routing

MAX_NOTE = 200  # a longer note is cut: it is one line
FIRST_NOTE = NP_("release note", "The setup when releases began")
DEPLOYED_NOTE = NP_("release note", "The setup as deployed")  # what a deploy records, when no release holds it yet
# The notes the platform writes itself: stored in English (the API and the CLI show them as stored), shown
# on a page in its language by ``shown_note``.
NOTES = {
    "created": NP_("release note", "Created"),
    "edited": NP_("release note", "Edited"),
    "attached": NP_("release note", "Attached “%(name)s”"),
    "detached": NP_("release note", "Detached “%(name)s”"),
    "moved up": NP_("release note", "Moved “%(name)s” up"),
    "moved down": NP_("release note", "Moved “%(name)s” down"),
    "link on": NP_("release note", "“%(name)s” turned on"),
    "link off": NP_("release note", "“%(name)s” turned off"),
    "plugin changed": NP_("release note", "Plugin “%(name)s” changed"),
    "plugin on": NP_("release note", "Plugin “%(name)s” turned on"),
    "plugin off": NP_("release note", "Plugin “%(name)s” turned off"),
    "rollback": NP_("release note", "Rollback to release %(name)s"),
}
_NOTE_PATTERNS = [
    (re.compile(re.escape(message).replace(re.escape("%(name)s"), "(?P<name>.+)") + r"\Z"), message)
    for message in (*NOTES.values(), FIRST_NOTE, DEPLOYED_NOTE)
]


def note(kind: str, **values) -> str:
    """A note the platform writes (``kind`` of NOTES), in English, as it is stored."""
    return NOTES[kind] % values


def shown_note(text: str) -> str:
    """A stored note in the page's language: the platform's own notes translated, a person's as written."""
    for pattern, message in _NOTE_PATTERNS:
        if found := pattern.match(text):
            return pgettext("release note", message, **found.groupdict())
    return text


def _secret(stored: str) -> dict:
    try:
        fingerprint = secrets_box.fingerprint(secrets_box.decrypt(stored))
    except ValueError:  # the key changed since it was stored: it can't be compared
        fingerprint = None
    return {"secret": True, "ciphertext": stored, "fingerprint": fingerprint}


def setup_of(application: Application) -> dict:
    """The application's serving setup as its rows hold it now."""
    from . import plugins  # which records releases itself: imported when used

    model = db.session.get(RegistryModel, application.model_id)
    env = [
        {"name": var.name, **(_secret(var.value) if var.is_secret else {"secret": False, "value": var.value})}
        for var in application.env_vars
    ]
    chain = []
    for link in plugins.chain(application):
        plugin = link.plugin
        secret_names = plugin_types.secret_settings(plugin.type)
        settings = {
            name: _secret(value) if name in secret_names and value else value
            for name, value in sorted((plugin.config or {}).items())
        }
        chain.append(
            {
                "plugin_id": plugin.id, "name": plugin.name, "type": plugin.type, "enabled": link.enabled,
                "plugin_enabled": plugin.enabled, "overrides": plugins.effective_overrides(link),
                "settings": settings,
            }
        )  # fmt: skip
    return {
        "model": {"id": application.model_id, "name": model.name if model else None},
        "config": dict(sorted(application.config.items())),
        "env": env,
        "plugins": chain,
    }


def _comparable(setup: dict) -> dict:
    """A setup with each ciphertext left out (a secret encrypted again is the same secret)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "ciphertext"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(setup)


def one_line(text: str) -> str:
    """A note as one line of visible text: no control, format or line-separator characters."""
    kept = "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else " " for c in text or "")
    return " ".join(kept.split())


def newest(application_id) -> Release | None:
    return db.session.scalar(
        db.select(Release).where(Release.application_id == application_id).order_by(Release.number.desc()).limit(1)
    )


def record(application: Application, author: User | None, note: str = "", setup: dict | None = None) -> Release:
    """The release of the application's setup now (or of ``setup``): a new number when it differs
    from the newest one."""
    setup = setup if setup is not None else setup_of(application)
    for _attempt in range(3):  # two saves at once may pick the same number: the loser takes the next
        latest = newest(application.id)
        if latest is not None and _comparable(latest.setup) == _comparable(setup):
            return latest
        release = Release(
            application_id=application.id,
            number=(latest.number if latest else 0) + 1,
            author_id=author.id if author is not None else None,
            note=one_line(note)[:MAX_NOTE],
            setup=setup,
        )
        db.session.add(release)
        try:
            db.session.commit()
        except IntegrityError as e:
            db.session.rollback()
            if "number" not in str(e.orig):  # not the unique number: the application is gone, say
                raise
            continue
        return release
    raise RuntimeError("could not number a release: too many saves at once")


def record_live(applications: list[Application], author: User | None, note: str) -> None:
    """Record a change that running servers take at once (their plugin chains, a plugin's settings):
    each then runs its new release: the one it ran, with the chain as it is now. A draft saved
    meanwhile stays a draft, recorded again after it (with the new chain) as the newest release."""
    for application in applications:
        serving = application.deployed_release if application.status == lifecycle.RUNNING else None
        if serving is None:
            record(application, author, note)
            continue
        now = setup_of(application)
        live_setup = {**get(application, serving).setup, "plugins": now["plugins"]}
        live = record(application, author, note, live_setup)
        if live.number != serving:
            db.session.execute(
                db.update(Application)
                .where(Application.id == application.id, Application.deployed_release == serving)
                .values(deployed_release=live.number, updated_at=utcnow())
            )
            mark_served(application.id, live.number)
            db.session.execute(  # its replicas run it now: the chain is live
                db.update(Replica)
                .where(Replica.application_id == application.id, Replica.release == serving)
                .values(release=live.number)
            )
            db.session.commit()
            routing.publish(application.id)  # the number its answers carry
        if _comparable(now) != _comparable(live_setup):
            record(application, author, note, now)  # the draft, newest again


def restore(application: Application, number: int, author: User | None) -> Release:
    """Make release ``number``'s setup the application's again (a rollback), as its next release: the
    model, configuration, environment (secrets as they were stored) and plugin chain. A plugin since
    deleted, disabled or no longer visible to the application's owner stays out (the attach rules);
    a plugin's own settings, shared by every application using it, are not changed. The caller deploys
    it (a roll-out while it runs); the chain, live in every replica, takes effect as its first server
    starts.

    :raise NotFound: no such release. :raise TransitionRefused: it is deploying or stopping.
    :raise FieldErrors: its model is gone from the registry.
    """
    target = get(application, number)
    setup = target.setup
    if db.session.get(RegistryModel, setup["model"]["id"]) is None:
        raise FieldErrors(
            {"model_id": [_("Release %(release)s's model is no longer in the registry.", release=number)]}
        )
    begin(application)
    lifecycle.claim_for_edit(application.id, model_id=setup["model"]["id"], config=dict(setup["config"]))
    db.session.execute(db.delete(EnvVar).where(EnvVar.application_id == application.id))
    for position, var in enumerate(setup["env"]):
        value = var["ciphertext"] if var["secret"] else var["value"]
        db.session.add(
            EnvVar(
                application_id=application.id, position=position, name=var["name"], value=value, is_secret=var["secret"]
            )
        )
    from . import plugins  # which records releases itself: imported when used

    owner = db.session.get(User, application.created_by_id)
    visible = plugins.visible_to(owner).where(Plugin.enabled.is_(True)).with_only_columns(Plugin.id)
    may_attach = set(db.session.scalars(visible))
    db.session.execute(db.delete(ApplicationPlugin).where(ApplicationPlugin.application_id == application.id))
    kept = [p for p in setup["plugins"] if p["plugin_id"] in may_attach]
    for position, link in enumerate(kept):
        db.session.add(
            ApplicationPlugin(
                application_id=application.id,
                plugin_id=link["plugin_id"],
                position=position,
                enabled=link["enabled"],
                config=dict(link["overrides"]),
            )
        )
    db.session.commit()
    db.session.expire(application)
    return record(application, author, note("rollback", name=number))


def mark_served(application_id, number: int) -> None:
    """Release ``number`` begins to serve now (committed by the caller)."""
    db.session.execute(
        db.update(Release)
        .where(Release.application_id == application_id, Release.number == number)
        .values(served_at=utcnow())
    )


def served_before(application: Application) -> int | None:
    """The release that served before the one deployed now (None: no other ever served)."""
    return db.session.scalar(
        db.select(Release.number)
        .where(
            Release.application_id == application.id,
            Release.served_at.is_not(None),
            Release.number != application.deployed_release,
        )
        .order_by(Release.served_at.desc(), Release.number.desc())
        .limit(1)
    )


def begin(*applications: Application) -> None:
    """Applications from before releases: each one's setup now is its first release."""
    for application in applications:
        if newest(application.id) is None:
            record(application, None, FIRST_NOTE)


def history(application: Application) -> list[Release]:
    """The application's releases, newest first."""
    begin(application)
    return list(
        db.session.scalars(
            db.select(Release).where(Release.application_id == application.id).order_by(Release.number.desc())
        )
    )


def get(application: Application, number) -> Release:
    """:raise NotFound: the application has no release of that number."""
    found = None
    if isinstance(number, int) and 1 <= number <= MAX_ID:
        found = db.session.scalar(
            db.select(Release).where(Release.application_id == application.id, Release.number == number)
        )
    if found is None:
        raise NotFound(_("%(name)s has no release %(release)s.", name=application.name, release=number))
    return found


def shown_setup(release: Release) -> dict:
    """A release's setup for people and scripts: a secret as the mask, never its ciphertext or fingerprint."""

    def shown(value):
        if isinstance(value, dict) and value.get("secret") and "ciphertext" in value:
            return secrets_box.MASK
        if isinstance(value, dict):
            return {k: shown(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shown(v) for v in value]
        return value

    setup = release.setup
    env = [{"name": v["name"], "secret": v["secret"], "value": secrets_box.MASK if v["secret"] else v["value"]}
           for v in setup["env"]]  # fmt: skip
    return {**shown({k: v for k, v in setup.items() if k != "env"}), "env": env}


def pane(application: Application, a=None, b=None) -> dict:
    """What the Releases pane shows: the releases, the one running, and the comparison of ``a`` with
    ``b`` (release numbers; by default the newest with the one before it)."""
    history_ = history(application)
    view = {"releases": history_, "serving_release": serving(application), "comparison": None, "compare_error": None}
    numbers = sorted({a, b}) if a and b and a != b else [r.number for r in history_[1::-1]]
    if len(numbers) == 2:
        try:
            older, newer = (get(application, number) for number in numbers)
        except NotFound as e:
            view["compare_error"] = str(e)
        else:
            view["comparison"] = {"older": older, "newer": newer, "changes": compare(older, newer)}
    return view


def serving(application: Application) -> int | None:
    """The number of the release its server runs, while it runs."""
    return application.deployed_release if application.status in (lifecycle.RUNNING, lifecycle.STOPPING) else None


@dataclass(frozen=True)
class Change:
    what: str  # "config.timeout_s", "env OPENAI_API_KEY", "plugin Moderation: settings.keywords"
    before: str  # "—" where there was none; "secret" values never appear
    after: str


ABSENT = "—"


def _shown(value) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, dict) and value.get("secret"):
        return "secret"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _pair(what: str, before, after) -> list[Change]:
    if _comparable(before) == _comparable(after):
        return []
    if isinstance(before, dict) and before.get("secret") and isinstance(after, dict) and after.get("secret"):
        return [Change(what, "secret", "secret (changed)")]
    return [Change(what, _shown(before), _shown(after))]


def _keyed(rows: list[dict], key: str) -> dict:
    return {row[key]: row for row in rows}


def compare(older: Release, newer: Release) -> list[Change]:
    """What differs from ``older`` to ``newer``, field by field; a secret only as changed or not."""
    a, b = older.setup, newer.setup
    changes = _pair("model", a["model"]["name"], b["model"]["name"])
    for field in sorted(set(a["config"]) | set(b["config"])):
        changes += _pair(f"config.{field}", a["config"].get(field), b["config"].get(field))
    env_a, env_b = _keyed(a["env"], "name"), _keyed(b["env"], "name")
    for name in sorted(set(env_a) | set(env_b)):
        before, after = env_a.get(name), env_b.get(name)
        changes += _pair(
            f"env {name}",
            before if before is None or before["secret"] else before["value"],
            after if after is None or after["secret"] else after["value"],
        )
    if [p["plugin_id"] for p in a["plugins"]] != [p["plugin_id"] for p in b["plugins"]]:
        changes.append(
            Change(
                "plugin chain",
                " → ".join(p["name"] for p in a["plugins"]) or ABSENT,
                " → ".join(p["name"] for p in b["plugins"]) or ABSENT,
            )
        )
    plugins_a = _keyed(a["plugins"], "plugin_id")  # the same plugin, whatever it is called now
    for after in (p for p in b["plugins"] if p["plugin_id"] in plugins_a):
        before, name = plugins_a[after["plugin_id"]], after["name"]
        changes += _pair(f"plugin {name}: name", before["name"], name)
        changes += _pair(f"plugin {name}: on here", before["enabled"], after["enabled"])
        changes += _pair(f"plugin {name}: on", before["plugin_enabled"], after["plugin_enabled"])
        changes += _pair(f"plugin {name}: type", before["type"], after["type"])
        for part in ("overrides", "settings"):
            for field in sorted(set(before[part]) | set(after[part])):
                changes += _pair(f"plugin {name}: {part}.{field}", before[part].get(field), after[part].get(field))
    return changes
