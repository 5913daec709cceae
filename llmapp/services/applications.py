"""Applications: who sees what, search, create, edit, delete, and their environment."""

import uuid

import psutil
from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload

from .. import secrets_box
from ..extensions import db
from ..models import Application, EnvVar, RegistryModel, User
from . import Conflict, NotFound, lifecycle, recommendations, registry

DEFAULT_CONFIG = {
    "max_concurrency": 8,
    "timeout_s": 60,
    "log_level": "INFO",
    "cache_size": 128,
    "batch_size": 4,
    "restart_policy": "on-failure",
    "max_restarts": 3,
    "log_lines": 2000,
    "log_days": 7,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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


def search(user: User, q: str = "", status: str = "", page: int = 1, per_page: int = 25):
    """A page of the applications ``user`` sees, most recently updated first.

    Owner and model come in the same query (no N+1); the order uses the updated_at indexes.
    """
    query = visible_to(user).options(joinedload(Application.model), joinedload(Application.owner))
    if q:
        query = query.where(Application.name.icontains(q.strip(), autoescape=True))
    if status in lifecycle.STATUSES:
        query = query.where(Application.status == status)
    query = query.order_by(Application.updated_at.desc(), Application.id.desc())
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
        raise NotFound("No such application.") from e
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
        raise NotFound("No such application.")
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
    }


def name_taken(owner_id: int, name: str, except_id=None) -> bool:
    query = select(Application.id).where(
        Application.created_by_id == owner_id, func.lower(Application.name) == name.strip().lower()
    )
    if except_id is not None:
        query = query.where(Application.id != except_id)
    return db.session.scalar(query) is not None


def available_memory_bytes() -> int:
    """Memory that serving can use: the configured accelerator memory, else this host's RAM."""
    configured = current_app.config.get("ACCELERATOR_MEMORY_GB")
    if configured:
        return int(configured * recommendations.GB)
    return psutil.virtual_memory().total


def recommendation_for(model: RegistryModel) -> recommendations.Recommendation:
    if model.engine == "openai":
        return recommendations.recommend_upstream(model.parameters_billions, model.context_length, model.base_url)
    return recommendations.recommend(
        model.parameters_billions, model.precision, model.context_length, available_memory_bytes()
    )


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


def _config(data: dict) -> dict:
    """The configuration fields of ``data``; one that is missing or empty takes its default."""
    return {key: default if data.get(key) is None else data[key] for key, default in default_config().items()}


def create(owner: User, data: dict) -> Application:
    """Create an application owned by ``owner``.

    :raise Conflict: the owner already has an application of that name.
    :raise NotFound: the model is not in the registry.
    """
    registry.get_model(data["model_id"])
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
    return application


def update(application: Application, data: dict) -> None:
    """Save an edit, only while the application is stopped or failed.

    :raise TransitionRefused: it is running, deploying or stopping.
    :raise Conflict: the owner already has another application of that name.
    """
    registry.get_model(data["model_id"])
    env = _env_rows(data.get("env", []), application.env_vars)
    lifecycle.claim_for_edit(
        application.id,
        name=data["name"].strip(),
        description=data.get("description") or "",
        model_id=data["model_id"],
        config=_config(data),
    )
    # The conditional UPDATE above holds the row; the environment changes in the same transaction.
    db.session.execute(db.delete(EnvVar).where(EnvVar.application_id == application.id))
    for var in env:
        var.application_id = application.id
        db.session.add(var)
    _commit_or_name_conflict(data["name"])
    db.session.expire(application)


def _commit_or_name_conflict(name: str) -> None:
    try:
        db.session.commit()
    except IntegrityError as e:  # a concurrent request took the name after the form checked it
        db.session.rollback()
        raise Conflict(f"You already have an application named “{name}”.") from e


def delete(application: Application) -> None:
    """Delete an application and everything it left: server process, keys and logs in Redis.

    :raise TransitionRefused: it is running, deploying or stopping.
    """
    from . import deployments

    leftovers = (application.id, application.process_pid, application.process_host)
    lifecycle.delete_if_editable(application.id)
    deployments.cleanup(*leftovers)


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
    return recommendations.warnings_for(application.config, recommendation_for(model))
