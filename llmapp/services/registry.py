"""The model registry (the "training center"): models that applications can serve."""

from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .. import engines
from ..extensions import db
from ..i18n import _l, format_number
from ..models import MAX_ID, Application, RegistryModel, User
from . import NUL_ERROR, Conflict, NotFound, Operator, Taken, refuse, require_admin

ADMIN_ONLY = _l("Only an admin can change the model registry.")

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
    """:raise NotFound: no such model (an id out of the database's range names none)."""
    model = db.session.get(RegistryModel, model_id) if 1 <= model_id <= MAX_ID else None
    if model is None:
        raise NotFound(_("No such model in the registry."))
    return model


def exists(model_id: int) -> bool:
    """Whether the registry has this model (an id out of the database's range names none)."""
    try:
        get_model(model_id)
    except NotFound:
        return False
    return True


def name_taken(name: str, except_id: int | None = None) -> bool:
    query = select(RegistryModel.id).where(func.lower(RegistryModel.name) == name.strip().lower())
    if except_id is not None:
        query = query.where(RegistryModel.id != except_id)
    return db.session.scalar(query) is not None


REQUIRED = ("name", "parameters_billions", "precision", "context_length", "engine")  # and what the engine needs
PARAMETERS_BILLIONS = (0.000001, 10_000)
CONTEXT_LENGTH = (1, 10_000_000)
LIMITS = {"name": 100, "family": 50, "source": 500, "base_url": 500, "upstream_model": 200, "api_key_env": 128}


def check(data: dict, model_id: int | None = None) -> dict:
    """The registry model ``data`` describes, normalised; the rules the page, the CLI and the API share.

    :raise FieldErrors: every rule broken, at its field.
    """
    errors: dict[str, list[str]] = {}
    values = {}

    def error(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    for field, limit in LIMITS.items():
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            error(field, _("Must be text."))
            value = ""
        typed = value or ""
        if "\x00" in typed:
            error(field, str(NUL_ERROR))
        elif len(typed) > limit:  # as typed: the API's document bounds what is sent
            error(field, _("At most %(count)s characters.", count=format_number(limit)))
        values[field] = typed.strip()
    if not values["name"]:
        error("name", _("Name is required."))
    elif "name" not in errors and name_taken(values["name"], except_id=model_id):
        error("name", taken_message(values["name"]))
    for field, (low, high), missing, whole in (
        ("parameters_billions", PARAMETERS_BILLIONS, _("Give the parameter count."), False),
        ("context_length", CONTEXT_LENGTH, _("Give the context length."), True),
    ):
        out_of_range = _("Between %(low)s and %(high)s.", low=_figure(low), high=_figure(high))
        value = data.get(field)
        if value is None or value == "":
            error(field, missing)
        elif isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
            error(field, _("Must be a whole number.") if whole else _("Must be a number."))
        elif not low <= value <= high or value != value:
            error(field, out_of_range)
        values[field] = value
    for field, choices in (("precision", RegistryModel.PRECISIONS), ("engine", engines.names())):
        values[field] = data.get(field)
        if values[field] not in choices:
            error(field, _("Choose one of: %(choices)s.", choices=", ".join(choices)))
    if "engine" not in errors:
        kind = engines.kind(values["engine"])
        for column, unused in engines.ENGINE_COLUMNS.items():  # what this engine does not read is not kept
            if kind.field(column) is None:
                values[column] = unused
                errors.pop(column, None)
        kind.check(values, errors)
    refuse(errors, taken={"name"} if errors.get("name") == [taken_message(values["name"])] else set())
    return values


def taken_message(name: str) -> str:
    return _("A model named “%(name)s” is already registered.", name=name)


def create_model(data: dict, *, acting: "User | Operator") -> RegistryModel:
    """:raise Forbidden: ``acting`` is not an admin. :raise FieldErrors: see check."""
    require_admin(acting, ADMIN_ONLY)
    model = RegistryModel(**check(data))
    db.session.add(model)
    _commit_or_name_taken(model.name)
    return model


def update_model(model_id: int, data: dict, *, acting: "User | Operator") -> RegistryModel:
    """:raise Forbidden: ``acting`` is not an admin. :raise NotFound: no such model. :raise FieldErrors: see
    check."""
    require_admin(acting, ADMIN_ONLY)
    model = get_model(model_id)
    for key, value in check(data, model_id).items():
        setattr(model, key, value)
    _commit_or_name_taken(model.name)
    return model


def _commit_or_name_taken(name: str) -> None:
    try:
        db.session.commit()
    except IntegrityError as e:  # registered meanwhile, in this or another case (the check ran before)
        db.session.rollback()
        raise Taken({"name": [taken_message(name)]}) from e


def delete_model(model_id: int, *, acting: "User | Operator") -> None:
    """:raise Forbidden: ``acting`` is not an admin. :raise NotFound: no such model. :raise Conflict:
    applications still use it."""
    require_admin(acting, ADMIN_ONLY)
    model = get_model(model_id)
    used = db.session.scalar(select(func.count()).select_from(Application).where(Application.model_id == model_id))
    if used:
        raise Conflict(
            ngettext(
                "“%(name)s” is used by %(num)s application; change or delete those applications first.",
                "“%(name)s” is used by %(num)s applications; change or delete those applications first.",
                used,
                name=model.name,
            )
        )
    db.session.delete(model)
    try:
        db.session.commit()
    except IntegrityError as e:  # an application chose it between the count and the delete
        db.session.rollback()
        raise Conflict(
            _("“%(name)s” is now used by an application; try again after changing it.", name=model.name)
        ) from e


def detect(source: str, *, acting: "User | Operator") -> "engines.Detected":
    """What the model at ``source`` on this host says of itself (and which engine takes it), to fill the
    form with. Admins only: it reads this host's files.

    :raise Forbidden: ``acting`` is not an admin. :raise engines.NotAModel: no engine takes that path.
    """
    require_admin(acting, ADMIN_ONLY)
    return engines.detect(source)


def _figure(number: float) -> str:
    """A bound as people write it: 0.000001, 10,000."""
    return f"{number:,f}".rstrip("0").rstrip(".")
