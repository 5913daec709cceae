"""Applications: who sees what, search, create, edit, delete, and their environment."""

import dataclasses
import functools
import os
import re
import uuid
from collections import defaultdict

import psutil
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload

from .. import engines, secrets_box
from ..extensions import db
from ..i18n import _l, format_number
from ..models import Application, EnvVar, RegistryModel, User
from ..runtime.spec import ServingConfig
from . import (
    NUL_ERROR,
    Conflict,
    NotFound,
    ServiceError,
    Taken,
    audit,
    environment,
    hosts,
    lifecycle,
    recommendations,
    refuse,
    registry,
    releases,
    routing,
)

# The serving fields and their defaults are ServingConfig's (runtime/spec.py), stated once there.
DEFAULT_CONFIG = dataclasses.asdict(ServingConfig())
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
RESTART_POLICIES = ("on-failure", "never")

# --- the rules of an application's fields: one statement, rendered by the forms, the CLI and the API ---

LABELS = {
    "name": _l("Name"),
    "model_id": _l("Model"),
    "description": _l("Description"),
    "max_concurrency": _l("Max concurrency"),
    "timeout_s": _l("Timeout (seconds)"),
    "log_level": _l("Log level"),
    "cache_size": _l("Cache size (entries)"),
    "batch_size": _l("Batch size"),
    "restart_policy": _l("Restart policy"),
    "max_restarts": _l("Max restarts"),
    "replicas": _l("Replicas"),
    "context_size": _l("Context size (tokens)"),
    "threads": _l("CPU threads"),
    "gpu_memory_share": _l("GPU memory share (%)"),
    "tensor_parallel": _l("Tensor-parallel GPUs"),
    "host": _l("Host"),
    "log_lines": _l("Log lines kept"),
    "log_days": _l("Log days kept"),
}
# Integer fields: (lowest, highest). The engine fields (context size … tensor parallel) are what a
# kind maps onto its engine's settings (llmapp/engines); 0 means "the model's / the engine's own".
BOUNDS = {
    **recommendations.LIMITS,
    "max_restarts": (0, 10),
    "replicas": (1, 8),
    "context_size": (0, 1_048_576),
    "threads": (0, 256),
    "gpu_memory_share": (10, 95),
    "tensor_parallel": (1, 8),
}
# What an application must be given; every other field left out (or empty) takes the model's
# recommendation (max_concurrency, batch_size, timeout_s, cache_size) or the platform's default.
REQUIRED = ("name", "model_id")
MAX_NAME = 100
# A name is the `model` id clients send and an argument on the command line: letters (any script),
# digits and - _ . : / , no spaces or quotes.
NAME = re.compile(r"^[^\W_][\w.:/-]*$")
NAME_RULE = _l(
    "Use letters, digits and - _ . : / (no spaces), starting with a letter or digit: the name is the "
    "model clients ask for and an argument on the command line."
)
MAX_DESCRIPTION = 2000
MAX_ENV_VARS = 100
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 10_000


def default_config() -> dict:
    """A new application's configuration: DEFAULT_CONFIG, with the platform's log retention
    (LLMAPP_LOG_LINES, LLMAPP_LOG_DAYS)."""
    return {**DEFAULT_CONFIG, "log_lines": current_app.config["LOG_LINES"], "log_days": current_app.config["LOG_DAYS"]}


def visible_to(user: User):
    """Applications ``user`` may see: all for an admin, their own for a member."""
    query = select(Application)
    if not user.is_admin:
        query = query.where(Application.created_by_id == user.id)
    return query


SORTS = {
    "-updated": (Application.updated_at.desc(), Application.id.desc()),
    "updated": (Application.updated_at, Application.id),
    "name": (func.lower(Application.name), Application.id),
    "-name": (func.lower(Application.name).desc(), Application.id.desc()),
}


def search(user: User, q: str = "", status: str = "", page: int = 1, per_page: int = 25, sort: str = "-updated"):
    """A page of the applications ``user`` sees, most recently updated first (or as ``sort`` says).

    Owner and model come in the same query (no N+1); the default order uses the updated_at indexes.
    """
    query = visible_to(user).options(joinedload(Application.model), joinedload(Application.owner))
    if q:
        query = query.where(Application.name.icontains(q.strip(), autoescape=True))
    if status in lifecycle.STATUSES:
        query = query.where(Application.status == status)
    query = query.order_by(*SORTS.get(sort, SORTS["-updated"]))
    pagination = db.paginate(query, page=page, per_page=per_page, max_per_page=100, error_out=False)
    if page > pagination.pages > 0:  # past the end (an old link, a hand-typed URL): the last page
        pagination = db.paginate(query, page=pagination.pages, per_page=per_page, max_per_page=100)
    return pagination


def get_for_user(application_id, user: User) -> Application:
    """The application, if ``user`` may see it.

    :raise NotFound: no such application, or another member's (the two look the same).
    """
    try:
        application_id = uuid.UUID(str(application_id))
    except ValueError as e:
        raise NotFound(_("No such application.")) from e
    application = db.session.scalar(
        visible_to(user)
        .where(Application.id == application_id)
        .options(
            joinedload(Application.model),
            joinedload(Application.owner),
            selectinload(Application.env_vars),
            selectinload(Application.plugin_links),
        )
    )
    if application is None:
        raise NotFound(_("No such application."))
    return application


def find(name_or_id: str) -> Application:
    """An application by id, or by name when only one owner has that name (the CLI's lookup).

    :raise NotFound: none, or several owners have an application of that name.
    """
    try:
        found = [db.session.get(Application, uuid.UUID(name_or_id))]
    except ValueError:
        found = db.session.scalars(select(Application).where(Application.name == name_or_id)).all()
    found = [a for a in found if a is not None]
    if not found:
        raise NotFound(f"No application named “{name_or_id}”.")
    if len(found) > 1:
        raise NotFound(
            f"Several owners have an application named “{name_or_id}”; use its id: "
            + ", ".join(str(a.id) for a in found)
        )
    return found[0]


def summary(application: Application) -> dict:
    """What scripts get: the application with its status and endpoint."""
    return {
        "id": str(application.id),
        "name": application.name,
        "status": application.status,
        "endpoint": application.endpoint,
        "model_id": application.model_id,
        "last_error": application.last_error,
        "deployed_at": application.deployed_at.isoformat() if application.deployed_at else None,
        "release": application.deployed_release,  # the release its replicas run
        "rolling_to": application.rolling_to,
        "canary_release": application.canary_release,  # serving beside release, with canary_percent of it
        "canary_percent": application.canary_percent,
        "replicas": len(application.serving_replicas),
    }


def name_taken(owner_id: int, name: str, except_id=None) -> bool:
    query = select(Application.id).where(
        Application.created_by_id == owner_id, func.lower(Application.name) == name.strip().lower()
    )
    if except_id is not None:
        query = query.where(Application.id != except_id)
    return db.session.scalar(query) is not None


@functools.cache
def _gpus_seen() -> list[dict]:
    """This host's GPUs as the first recommendation found them (nvidia-smi takes a while; GPUs stay)."""
    from .hosts import gpus

    return gpus()


def serving_capacity() -> tuple[int, int | None]:
    """What this host serves with: memory (the configured accelerator memory, else its first GPU's, else
    its RAM), and its CPU cores when it serves on the CPU (None on an accelerator)."""
    configured = current_app.config.get("ACCELERATOR_MEMORY_GB")
    if configured:
        return int(configured * recommendations.GB), None
    if found := _gpus_seen():
        return found[0]["memory_bytes"], None
    return psutil.virtual_memory().total, len(os.sched_getaffinity(0)) or 1


def recommendation_for(model: RegistryModel) -> recommendations.Recommendation:
    """What the model's engine recommends for it on this host.

    :raise Conflict: the model's engine is not one this platform serves, or what is registered of the
        model gives nothing to recommend from.
    """
    try:
        kind = engines.kind(model.engine)
    except engines.NotReady as e:
        raise Conflict(str(e)) from e
    try:
        memory, cpu_cores = serving_capacity()
        return kind.recommend(model, memory, cpu_cores)
    except ValueError as e:  # a size, context or file that gives no positive figure
        raise Conflict(_("No recommendation for “%(model)s”: %(reason)s.", model=model.name, reason=e)) from e


def serving_problem(model: RegistryModel) -> str | None:
    """Why this host could not serve ``model`` now (its directory or file missing, its engine not
    installed), as the deploy would say it; None when nothing stands in the way."""
    try:
        engines.kind(model.engine).preflight(model)
    except engines.NotReady as e:
        return str(e)
    return None


def _env_rows(rows: list[dict], existing: list[EnvVar]) -> list[EnvVar]:
    """New EnvVar rows from form rows. A secret row left empty keeps the value stored for it
    (found by ``secret_id`` among this application's own variables only)."""
    stored = {var.id: var for var in existing if var.is_secret}
    result = []
    for position, row in enumerate(rows):
        name, value, secret = row["name"].strip(), row.get("value") or "", bool(row.get("secret"))
        kept = stored.get(row.get("secret_id"))
        if secret and not value and kept is not None:
            ciphertext = kept.value
        elif secret:
            ciphertext = secrets_box.encrypt(value)
        else:
            ciphertext = value
        result.append(EnvVar(name=name, value=ciphertext, is_secret=secret, position=position))
    return result


def check(data: dict, owner_id: int, application_id=None) -> dict:
    """The application ``data`` describes, normalised (names stripped, defaults filled in).

    ``data``: name, model_id (REQUIRED), description, the configuration fields, and env (a list of rows:
    name, value, secret, secret_id). Values arrive typed (an adapter parses text); a wrong type is an
    error. A configuration field left out (or empty) keeps the application's value (``application_id``:
    an edit), or on create takes serving_defaults.

    :raise FieldErrors: every rule broken, at its field ("env.3.name" for a row's).
    :raise Taken: the name is the only thing wrong: the owner has an application of that name.
    """
    errors: defaultdict[str, list[str]] = defaultdict(list)
    clean = {}

    def text(field: str, value, limit: int, required: str | None = None) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                errors[field].append(required)
            return ""
        if not isinstance(value, str):
            errors[field].append(_("Must be text."))
            return ""
        if "\x00" in value:
            errors[field].append(str(NUL_ERROR))
        elif len(value) > limit:
            errors[field].append(_("At most %(count)s characters.", count=format_number(limit)))
        return value

    clean["name"] = text("name", data.get("name"), MAX_NAME, _("Name is required.")).strip()
    renamed = application_id is None or clean["name"] != db.session.scalar(
        select(Application.name).where(Application.id == application_id)
    )  # a name from before the rule stays while it is kept
    if clean["name"] and "name" not in errors and renamed and not NAME.match(clean["name"]):
        errors["name"].append(str(NAME_RULE))
    if "name" not in errors and name_taken(owner_id, clean["name"], except_id=application_id):
        errors["name"].append(taken_message(clean["name"]))
    clean["description"] = text("description", data.get("description"), MAX_DESCRIPTION)
    model_id = data.get("model_id")
    if model_id is None or model_id == "":
        errors["model_id"].append(_("Choose a model."))
    elif not _is_int(model_id) or not registry.exists(model_id):
        errors["model_id"].append(_("Choose a model from the registry."))
    clean["model_id"] = model_id
    stored = db.session.get(Application, application_id) if application_id is not None else None
    if stored is not None:  # an edit: a field left out keeps what it holds
        defaults = {**default_config(), **stored.config}
    else:
        defaults = serving_defaults(model_id if "model_id" not in errors else None)
    for field, (low, high) in BOUNDS.items():
        value = data.get(field)
        if value is None or value == "":
            value = defaults[field]
        elif not _is_int(value):
            errors[field].append(_("Must be a whole number."))
        elif not low <= value <= high:
            errors[field].append(_("Must be between %(low)s and %(high)s.", low=low, high=high))
        clean[field] = value
    for field, choices in (("log_level", LOG_LEVELS), ("restart_policy", RESTART_POLICIES)):
        value = data.get(field) if data.get(field) not in (None, "") else defaults[field]
        if value not in choices:
            errors[field].append(_("Choose one of: %(choices)s.", choices=", ".join(choices)))
        clean[field] = value
    pin_errors: list[str] = []
    clean["host"] = hosts.checked_pin(data.get("host"), defaults["host"], pin_errors)
    if pin_errors:
        errors["host"] = pin_errors
    clean["env"] = _check_env(data.get("env") or [], errors, text)
    refuse(errors, taken={"name"} if errors.get("name") == [taken_message(clean["name"])] else set())
    return clean


def taken_message(name: str) -> str:
    return _("You already have an application named “%(name)s”.", name=name)


def serving_defaults(model_id: int | None) -> dict:
    """The configuration a new application of the model starts with (the form's first values, and what
    a field left out on create takes): the model's recommendation over the platform's defaults."""
    return {**default_config(), **(_recommended(model_id) if model_id is not None else {})}


def preferred_model_id(models: list[RegistryModel]) -> int | None:
    """The model a new application starts on: the first this host serves itself (its files are here and
    its weights fit), else the first an upstream serves, else the first."""
    upstream = None
    for model in models:
        if serving_problem(model) is None:
            try:
                found = recommendation_for(model)
            except ServiceError:
                continue
            if found.fits and not found.upstream:
                return model.id
            upstream = upstream or (model.id if found.upstream else None)
    return upstream or (models[0].id if models else None)


def _recommended(model_id: int) -> dict:
    """The serving fields the model's engine recommends ({} for a model that can't recommend)."""
    try:
        return recommendation_for(registry.get_model(model_id)).as_config()
    except ServiceError:
        return {}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_env(rows, errors, text) -> list[dict]:
    if not isinstance(rows, list):
        errors["env"].append(_("Must be a list of variables (name, value, secret)."))
        return []
    if len(rows) > MAX_ENV_VARS:
        errors["env"].append(
            _(
                "At most %(limit)s environment variables; there are %(count)s. Remove some.",
                limit=MAX_ENV_VARS,
                count=len(rows),
            )
        )
    seen, clean, once = set(), [], _("Each variable name may appear only once.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors[f"env.{i}"].append(_("Must be a variable: name, value, secret."))
            continue
        name = text(f"env.{i}.name", row.get("name"), MAX_ENV_NAME, _("Give the variable a name.")).strip()
        if name and f"env.{i}.name" not in errors and not environment.ENV_NAME.match(name):
            errors[f"env.{i}.name"].append(str(environment.ENV_NAME_RULE))
        elif name and (why := environment.refusal(name)):
            errors[f"env.{i}.name"].append(why)
        if name in seen:
            errors[f"env.{i}.name"].append(_("%(name)s is defined twice.", name=name))
            if once not in errors["env"]:
                errors["env"].append(once)
        seen.add(name)
        value = text(f"env.{i}.value", row.get("value"), MAX_ENV_VALUE)
        secret, secret_id = row.get("secret", False), row.get("secret_id")
        if not isinstance(secret, bool):
            errors[f"env.{i}.secret"].append(_("Must be true or false."))
        if secret_id is not None and not _is_int(secret_id):
            errors[f"env.{i}.secret_id"].append(_("Invalid secret reference."))
        if secret_id and not secret and not value:
            errors[f"env.{i}.value"].append(
                _(
                    "This variable holds a secret. Type its value to keep it as plain text, "
                    "or tick Secret to keep the stored value."
                )
            )
        clean.append({"name": name, "value": value, "secret": secret is True, "secret_id": secret_id})
    return clean


def _config(data: dict) -> dict:
    """The configuration fields of ``data``; one that is missing or empty takes its default."""
    return {key: default if data.get(key) is None else data[key] for key, default in default_config().items()}


def create(owner: User, data: dict) -> Application:
    """Create an application owned by ``owner``.

    :raise FieldErrors: a rule is broken (see check).
    :raise Taken: another request took the name meanwhile.
    """
    note = data.get("note") or releases.note("created")
    data = check(data, owner.id)
    application = Application(
        name=data["name"].strip(),
        description=data.get("description") or "",
        model_id=data["model_id"],
        config=_config(data),
        created_by_id=owner.id,
        status=lifecycle.STOPPED,
    )
    application.env_vars = _env_rows(data.get("env", []), [])
    db.session.add(application)
    _commit_or_name_conflict(application.name)
    routing.publish(application.id)  # the gateway says "stopped", not "no such model"
    releases.record(application, owner, note)
    return application


def update(application: Application, data: dict, author: User | None = None) -> None:
    """Save an edit, while the application is stopped, failed or running (then the changed setup is a
    draft release: its servers run the release they started from). A field left out of ``data``
    keeps its value (the description, the configuration, the variables). A changed setup is the next
    release, by ``author`` (None: the command line), with ``data["note"]``.

    :raise TransitionRefused: it is deploying or stopping.
    :raise FieldErrors: a rule is broken (see check).
    :raise Taken: another request took the name meanwhile.
    """
    releases.begin(application)  # the setup before this edit, for one from before releases
    before = audit.application_view(application, application.env_vars)
    kept_env = "env" not in data  # left out: the variables stay as they are
    note = data.get("note") or releases.note("edited")
    data = check({"description": application.description, **data}, application.created_by_id, application.id)
    env = None if kept_env else _env_rows(data.get("env", []), application.env_vars)

    def write() -> None:
        lifecycle.claim_for_edit(
            application.id,
            name=data["name"].strip(),
            description=data.get("description") or "",
            model_id=data["model_id"],
            config=_config(data),
        )
        after = Application(
            name=data["name"].strip(), description=data.get("description") or "", model_id=data["model_id"],
            config=_config(data),
        )  # fmt: skip
        changed = audit.diff(before, audit.application_view(after, application.env_vars if env is None else env))
        if changed:
            audit.record("application.update", application, changed)
        if env is None:
            return
        # The conditional UPDATE above holds the row; the environment changes in the same transaction.
        db.session.execute(db.delete(EnvVar).where(EnvVar.application_id == application.id))
        for var in env:
            var.application_id = application.id
            db.session.add(var)

    _commit_or_name_conflict(data["name"], before=write)
    db.session.expire(application)
    routing.publish(application.id)  # its name is what the gateway routes by
    releases.record(application, author, note)


def _commit_or_name_conflict(name: str, before=None) -> None:
    """Commit (after ``before``'s writes, whose UPDATE meets the unique index at once)."""
    try:
        if before is not None:
            before()
        db.session.commit()
    except IntegrityError as e:  # a concurrent request took the name after the form checked it
        db.session.rollback()
        raise Taken({"name": [taken_message(name)]}) from e


def delete(application: Application) -> None:
    """Delete an application and everything it left: server process, keys and logs in Redis.

    :raise TransitionRefused: it is running, deploying or stopping.
    """
    from . import replicas  # which reaches this module (server_spec): imported when used

    leftovers = [(r.pid, r.host) for r in application.replicas if r.pid]
    application_id = application.id
    audit.record("application.delete", application)  # committed with the delete, or rolled back with it
    lifecycle.delete_if_editable(application_id)
    replicas.cleanup(application_id, leftovers)


def masked_env(application: Application) -> list[dict]:
    """The environment as pages may show it: secrets masked, never decrypted."""
    return [
        {
            "id": var.id,
            "name": var.name,
            "value": secrets_box.MASK if var.is_secret else var.value,
            "secret": var.is_secret,
        }
        for var in application.env_vars
    ]


def config_warnings(application: Application) -> list[str]:
    model = registry.get_model(application.model_id)  # from the identity map when already loaded
    try:
        return recommendations.warnings_for(application.config, recommendation_for(model))
    except Conflict:
        return []  # nothing to compare with
