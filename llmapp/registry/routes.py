from flask import abort, flash, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from ..i18n import _l
from ..services import Conflict, NotFound, engine_installs, model_detection, registry
from ..web import admin_required, redirect_to, render
from . import bp
from .forms import RegistryModelForm


@bp.before_request
@login_required
def require_login():
    """Every registry page needs a logged-in user; changes need an admin (admin_required, and the service)."""


def get_model(model_id: int):
    """:raise 404: no such model."""
    try:
        return registry.get_model(model_id)
    except NotFound:
        abort(404, _("No such model in the registry."))


@bp.get("/")
def index():
    """List the registry's models, with how many applications use each."""
    return render_template("registry/index.html", models=registry.list_models(), usage=registry.usage_counts())


@bp.route("/new", methods=["GET", "POST"])
@admin_required(registry.ADMIN_ONLY)
def create():
    """Register a model (admins only)."""
    form = RegistryModelForm()
    if form.is_submitted() and form.judged():
        model = registry.create_model(form.service_data(), acting=current_user)
        flash(_("Model “%(name)s” registered.", name=model.name), "success")
        return redirect_to(url_for(".index"))
    return _form_page(form, None)


def _form_page(form, model):
    """The form, whole or (htmx) alone; 422 when it came back with errors."""
    code = 422 if form.errors or form.form_errors else 200
    return render("registry/form.html", "registry/_form.html", code=code, form=form, model=model)


@bp.route("/<id:model_id>/edit", methods=["GET", "POST"])
@admin_required(registry.ADMIN_ONLY)
def edit(model_id):
    """Edit a registered model (admins only)."""
    model = get_model(model_id)
    form = RegistryModelForm(obj=model, model_id=model.id)
    if form.is_submitted() and form.judged():
        registry.update_model(model.id, form.service_data(), acting=current_user)
        flash(_("Model “%(name)s” saved.", name=model.name), "success")
        return redirect_to(url_for(".index"))
    return _form_page(form, model)


@bp.post("/detect")
@admin_required(registry.ADMIN_ONLY)
def detect():
    """Fill the form from the model directory at ``source`` (config.json, safetensors headers), for the
    admin to confirm; or say at the field why that path is not a model directory."""
    model_id = request.form.get("model_id", type=int)
    model = get_model(model_id) if model_id else None
    form = RegistryModelForm(model_id=model.id if model else None)
    detected = None
    try:
        detected = registry.detect(form.source.data or "", acting=current_user)
    except model_detection.NotAModel as e:
        form.source.errors = [str(e)]
    else:
        for name, value in detected.as_fields().items():
            form[name].data, form[name].raw_data = value, None  # rendered from data, not what was typed
    return render_template("registry/_form.html", form=form, model=model, detected=detected)


@bp.route("/<id:model_id>/delete", methods=["POST", "DELETE"])
@admin_required(registry.ADMIN_ONLY)
def delete(model_id):
    """Remove a model from the registry, unless applications use it (admins only)."""
    name = get_model(model_id).name
    try:
        registry.delete_model(model_id, acting=current_user)
    except Conflict as e:
        flash(str(e), "error")
    else:
        flash(_("Model “%(name)s” removed.", name=name), "success")
    return redirect_to(url_for(".index"))


@bp.get("/engines")
@admin_required(_l("Only admins see the engines."))
def engines():
    """The engines on this host: installed or not (and the command that installs one), versions, users."""
    return render_template("registry/engines.html", engines=engine_installs.overview(current_user))
