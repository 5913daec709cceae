"""The model registry (the "training center"): models that applications can serve."""

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import Application, RegistryModel
from . import Conflict, NotFound

FIELDS = (
    "name",
    "family",
    "parameters_billions",
    "precision",
    "context_length",
    "engine",
    "source",
    "base_url",
    "upstream_model",
    "api_key_env",
)


def list_models() -> list[RegistryModel]:
    return list(db.session.scalars(select(RegistryModel).order_by(RegistryModel.name)))


def usage_counts() -> dict[int, int]:
    """How many applications use each model, in one query."""
    rows = db.session.execute(select(Application.model_id, func.count()).group_by(Application.model_id))
    return dict(rows.all())


def get_model(model_id: int) -> RegistryModel:
    """:raise NotFound: no such model."""
    model = db.session.get(RegistryModel, model_id)
    if model is None:
        raise NotFound("No such model in the registry.")
    return model


def name_taken(name: str, except_id: int | None = None) -> bool:
    query = select(RegistryModel.id).where(func.lower(RegistryModel.name) == name.strip().lower())
    if except_id is not None:
        query = query.where(RegistryModel.id != except_id)
    return db.session.scalar(query) is not None


def _clean(data: dict) -> dict:
    values = {key: data.get(key) for key in FIELDS}
    values["name"] = values["name"].strip()
    if values["engine"] != "openai":  # only the openai engine has an upstream
        values["base_url"] = values["upstream_model"] = None
    values["api_key_env"] = (values["api_key_env"] or "").strip() or "OPENAI_API_KEY"
    return values


def create_model(data: dict) -> RegistryModel:
    model = RegistryModel(**_clean(data))
    db.session.add(model)
    db.session.commit()
    return model


def update_model(model_id: int, data: dict) -> RegistryModel:
    model = get_model(model_id)
    for key, value in _clean(data).items():
        setattr(model, key, value)
    db.session.commit()
    return model


def delete_model(model_id: int) -> None:
    """:raise Conflict: applications still use it."""
    model = get_model(model_id)
    used = db.session.scalar(select(func.count()).select_from(Application).where(Application.model_id == model_id))
    if used:
        raise Conflict(
            f"“{model.name}” is used by {used} application{'s' if used != 1 else ''}; "
            "change or delete those applications first."
        )
    db.session.delete(model)
    try:
        db.session.commit()
    except IntegrityError as e:  # an application chose it between the count and the delete
        db.session.rollback()
        raise Conflict(f"“{model.name}” is now used by an application; try again after changing it.") from e
