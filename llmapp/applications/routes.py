"""An application's pages: the list, the form (new, edit, its helpers), the detail page with its
Monitoring pane, deploy, stop and delete. The detail page's other panes are beside this module, on the
same blueprint: log_routes.py (Logs), playground_routes.py (Playground), chain_routes.py (Plugins),
release_routes.py (Releases) and key_routes.py (API keys, limits and Usage)."""

from flask import abort, flash, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from werkzeug.datastructures import MultiDict

from .. import charts
from ..i18n import translate
from ..runtime import plugins as plugin_types
from ..services import (
    Conflict,
    FieldErrors,
    NotFound,
    ServiceError,
    api_keys,
    applications,
    deployments,
    hosts,
    lifecycle,
    playground,
    plugins,
    registry,
    releases,
    stops,
    usage,
)
from ..services import metrics as metrics_service
from ..web import int_arg, redirect_to, render
from . import bp
from .forms import ApplicationForm, PlaygroundForm

MAX_PAGE = 1_000_000  # past any real list; a larger page number is read as the first page


@bp.before_request
@login_required
def require_login():
    """Every application page needs a logged-in user."""


def get_application(application_id):
    """The current user's application (any, for an admin).

    :raise 404: no such application, or another member's.
    """
    try:
        return applications.get_for_user(application_id, current_user)
    except NotFound:
        abort(404, _("No such application, or it is not yours."))


def _form(application=None, **kwargs) -> ApplicationForm:
    return ApplicationForm(
        owner_id=application.created_by_id if application else current_user.id,
        application_id=application.id if application else None,
        models=registry.list_models(),
        hosts=hosts.offered(),
        plugin_choices=[
            (plugin.id, f"{plugin.name} — {translate(plugin_types.TYPES[plugin.type].title)}")
            for plugin in plugins.choosable(application, current_user)
        ],
        **kwargs,
    )


def _recommendation(model_id):
    try:
        return applications.recommendation_for(registry.get_model(model_id)) if model_id else None
    except (NotFound, Conflict):  # no such model, or nothing to recommend from: the form shows none
        return None


def _model_problem(model_id) -> str | None:
    """What would stop the chosen model from serving here, said when it is chosen, not at deploy."""
    try:
        return applications.serving_problem(registry.get_model(model_id)) if model_id else None
    except NotFound:
        return None


def _render_form(form, application=None, code=200):
    form.conceal_secrets()
    return render(
        "applications/form.html",
        "applications/_form.html",
        code=code,
        form=form,
        application=application,
        recommendation=_recommendation(form.model_id.data),
        model_problem=_model_problem(form.model_id.data),
    )


@bp.get("/")
def index():
    """List the applications the user sees, filtered and paginated; the table alone for htmx."""
    q = request.args.get("q", "").strip()
    status = request.args.get("status", "")
    page = int_arg("page", high=MAX_PAGE, default=1)
    pagination = applications.search(current_user, q, status, page)
    return render("applications/index.html", "applications/_table.html", pagination=pagination, q=q, status=status)


@bp.route("/new", methods=["GET", "POST"])
def create():
    """Create an application with the form; errors re-render it inline."""
    # A new form starts on the model asked for (?model_id=), else the first this host can serve, with its
    # serving defaults (as the API's create fills them); a submitted one is what was sent.
    if request.method == "GET":
        models = registry.list_models()
        asked = int_arg("model_id")
        chosen = asked if any(m.id == asked for m in models) else applications.preferred_model_id(models)
        form = _form(data={**applications.serving_defaults(chosen), "model_id": chosen})
    else:
        form = _form()
    if form.is_submitted() and form.judged():
        try:
            application = applications.create(current_user, form.service_data())
        except FieldErrors as e:  # a rule that changed since judged (a name taken meanwhile)
            form.show_errors(e.errors)
        except (Conflict, NotFound) as e:
            form.form_errors.append(str(e))
        else:
            done = _("Application “%(name)s” created.", name=application.name)
            return _saved(application, done, url_for(".index"), form.plugins.data)
    return _render_form(form, code=422 if form.errors or form.form_errors else 200)


def detail_context(application) -> dict:
    return {
        "application": application,
        "env": applications.masked_env(application),
        "warnings": applications.config_warnings(application),
        "keys": api_keys.list_keys(application),
        "new_key": None,
        "usage_report": lambda: usage.for_application(application, usage.DEFAULT_DAYS),
        "windows": metrics_service.WINDOWS,
        "playground_form": PlaygroundForm(formdata=None),
        "history": playground.history(application, current_user),
        # The Plugins section (chain_routes.py renders it alone after a change).
        "links": plugins.chain(application),
        # The Releases pane (release_routes.py renders it alone for a comparison): read only where it is
        # shown, not for every poll of the live part.
        "releases_pane": lambda: releases.pane(application, int_arg("a"), int_arg("b")),
        "attachable": plugins.attachable(application, current_user),
        "types": plugin_types.TYPES,
        "override_forms": {},
        "state": live_state(application),  # the live part's poll says what it saw
    }


def live_state(application) -> str:
    """What the panes outside the live part follow: its status, and which releases serve how."""
    return ".".join(
        str(v) for v in (application.status, application.deployed_release, application.rolling_to,
                         application.canary_release, application.canary_percent)
    )  # fmt: skip


@bp.get("/<application_id>")
def detail(application_id):
    """Show one application; htmx polls the same URL for the live part (status, phases, logs)."""
    application = get_application(application_id)
    response = render("applications/detail.html", "applications/_live.html", **detail_context(application))
    seen = request.args.get("seen")
    if seen and seen != live_state(application):
        # The rest of the page that follows the state (Monitoring, Releases) refreshes itself on this.
        response.headers["HX-Trigger"] = "application-status-changed"
    return response


@bp.get("/<application_id>/monitoring")
def monitoring(application_id):
    """The Monitoring pane over ?window=15m|1h|24h|7d: the detail page with it, or the pane alone for htmx."""
    application = get_application(application_id)
    report = metrics_service.report(application, request.args.get("window"))
    window = metrics_service.window(report["window"])
    return render(
        "applications/detail.html",
        "applications/_monitoring.html",
        **detail_context(application),
        report=report,
        window=window,
        charts=charts.monitoring_charts(report.get("points", []), window.point_s),
    )


@bp.get("/overview")
def overview():
    """The App Center's overview (applications by status, the busiest and most failing of the last hour)."""
    return render_template("applications/_overview.html", overview=metrics_service.overview(current_user))


def _request(application_id, request_transition):
    application = get_application(application_id)
    # Read before the transition: if another request deletes the application meanwhile, the refused
    # transition expires the object and it could not be loaded again.
    application_id = application.id
    try:
        request_transition(application)
    except ServiceError as e:
        flash(str(e), "error")
    # No "Deploying…" flash on success: it would outlive the state. The page's live part says it.
    return redirect_to(url_for(".detail", application_id=application_id))


@bp.post("/<application_id>/deploy")
def deploy(application_id):
    """Deploy (the page asked for confirmation): deploying now, the job starts the server."""
    return _request(application_id, deployments.request_deploy)


@bp.post("/<application_id>/stop")
def stop(application_id):
    """Stop (the page asked for confirmation): in-flight requests finish, then the server exits."""
    return _request(application_id, stops.request_stop)


@bp.route("/<application_id>/edit", methods=["GET", "POST"])
def edit(application_id):
    """Edit an application, only while it is stopped or failed."""
    application = get_application(application_id)
    if "edit" not in lifecycle.allowed_actions(application.status) and request.method == "GET":
        flash(
            _(
                "%(name)s is %(status)s: wait until it is running, stopped or failed to edit it.",
                name=application.name,
                status=lifecycle.STATUS_LABELS.get(application.status, application.status),
            ),
            "error",
        )
        return redirect_to(url_for(".detail", application_id=application.id))
    if request.method == "GET":
        form = _form(application, data=_form_data(application))
    else:
        form = _form(application)
    if form.is_submitted() and form.judged():
        try:
            applications.update(application, form.service_data(), current_user)
        except FieldErrors as e:
            form.show_errors(e.errors)
            return _render_form(form, application, code=422)
        except (Conflict, NotFound) as e:
            form.form_errors.append(str(e))
            return _render_form(form, application, code=409)
        done = _("Application “%(name)s” saved.", name=application.name)
        return _saved(application, done, url_for(".detail", application_id=application.id), form.plugins.data)
    return _render_form(form, application, code=422 if form.errors or form.form_errors else 200)


def _form_data(application) -> dict:
    env = [
        {
            "name": var["name"],
            "value": "" if var["secret"] else var["value"],
            "secret": var["secret"],
            "secret_id": str(var["id"]) if var["secret"] else "",
        }
        for var in applications.masked_env(application)
    ]
    return {
        "name": application.name,
        "model_id": application.model_id,
        "description": application.description,
        **applications.default_config(),
        **application.config,
        "env": env,
        "plugins": [link.plugin_id for link in plugins.chain(application)],
    }


def _saved(application, done: str, then: str, chosen_plugins: list[int]):
    """After a save: attach the chosen plugins, say ``done`` (and the configuration's warnings), go on."""
    try:
        plugins.set_attached(application, current_user, chosen_plugins)
    except ServiceError as e:  # a plugin disabled or unshared since the form was shown
        flash(_("The plugins were not all attached: %(reason)s", reason=str(e)), "error")
    flash(done, "success")
    for warning in applications.config_warnings(application):
        flash(warning, "warning")
    return redirect_to(then)


@bp.route("/<application_id>/delete", methods=["POST", "DELETE"])
def delete(application_id):
    """Delete an application (the page asked for confirmation), only while stopped or failed."""
    application = get_application(application_id)
    name, application_id = application.name, application.id
    try:
        applications.delete(application)
    except Conflict as e:
        flash(str(e), "error")
        return redirect_to(url_for(".detail", application_id=application_id))
    flash(_("Application “%(name)s” deleted.", name=name), "success")
    return redirect_to(url_for(".index"))


@bp.get("/env-row")
def env_row():
    """A new environment row for the form, plus the add button moved on to the next index."""
    index = int_arg("index", low=0, high=applications.MAX_ENV_VARS - 1, default=0)
    form = _form(formdata=None)
    form.env.last_index = index - 1  # append_entry names the row env-<last_index + 1>
    row = form.env.append_entry()
    return render_template("applications/_env_row.html", row=row, next_index=index + 1, oob=True)


@bp.get("/recommendation")
def recommendation():
    """The configuration recommended for the chosen model, with its reasoning and an Apply button."""
    return render_template(
        "applications/_recommendation.html",
        recommendation=_recommendation(int_arg("model_id")),
        model_problem=_model_problem(int_arg("model_id")),
        model_id=int_arg("model_id"),
    )


@bp.get("/recommendation/apply")
def apply_recommendation():
    """The configuration fields, filled with the recommendation (other fields as the user left them)."""
    recommended = _recommendation(int_arg("model_id"))
    applied = recommended.as_config() if recommended else {}
    values = MultiDict(request.args)
    for key, value in applied.items():
        values[key] = str(value)
    form = _form(formdata=values, meta={"csrf": False})
    # A field Apply left alone keeps its error mark while it is still wrong; the filled ones lose theirs.
    kept = (applications.DEFAULT_CONFIG.keys() - applied.keys()) & request.args.keys()
    for key in kept:
        form[key].validate(form)  # text that is not a number
    try:
        applications.check(form.service_data(), current_user.id)
    except FieldErrors as e:
        form.show_errors({field: messages for field, messages in e.errors.items() if field in kept})
    return render_template("applications/_config_fields.html", form=form)
