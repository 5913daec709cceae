"""The REST API's routes: thin adapters over the same services the pages, the jobs and the CLI call.

Objects are the token user's as in the pages: another member's application answers 404, the same as
one that does not exist. A refused transition is 409 with the application's status now.
"""

import copy
import json

from flask import current_app, g, jsonify, request, url_for
from spectree import Response

from ..extensions import db
from ..runtime import plugins as plugin_types
from ..secrets_box import MASK
from ..services import api_keys, applications, deployments, plugins, registry, users
from ..services import logs as logs_service
from ..services import metrics as metrics_service
from ..web import event_stream
from . import bp, problems, spec
from .schemas import (
    ApplicationIn,
    ApplicationOut,
    ApplicationPage,
    ApplicationQuery,
    AttachIn,
    Chain,
    ChainStep,
    ChainStepIn,
    DocumentIn,
    KeyIn,
    KeyList,
    KeyOut,
    LogPage,
    LogQuery,
    MetricsQuery,
    ModelIn,
    ModelList,
    ModelOut,
    NewKey,
    NewPassword,
    PluginIn,
    PluginList,
    PluginOut,
    PluginQuery,
    PluginTypeList,
    Problem,
    RecommendationOut,
    Transition,
    UserChange,
    UserIn,
    UserList,
    UserOut,
)

ERRORS = {"HTTP_401": Problem, "HTTP_404": Problem, "HTTP_429": Problem}
BODY_ERRORS = {**ERRORS, "HTTP_415": Problem, "HTTP_422": Problem}  # operations that read a JSON body
APPLICATIONS = ["applications"]


def _application(application_id):
    """The token user's application, or a 404 problem to return."""
    return applications.get_for_user(application_id, g.api_user)


def _out(application) -> dict:
    model = application.model
    return ApplicationOut(
        id=str(application.id),
        name=application.name,
        description=application.description,
        model_id=application.model_id,
        model=model.name if model else "",
        owner=application.owner.email if application.owner else None,
        status=application.status,
        endpoint=application.endpoint,
        last_error=application.last_error,
        config=application.config,
        env=applications.masked_env(application),
        created_at=application.created_at,
        updated_at=application.updated_at,
        deployed_at=application.deployed_at,
    )


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 document of this API, generated from its routes."""
    return jsonify(document())


_document: dict | None = None


def document() -> dict:
    """spectree's document, with every error response as what it is: a problem document
    (application/problem+json), its 422s included (spectree would describe its own error list)."""
    global _document
    if _document is None:
        generated = copy.deepcopy(spec.spec)
        problem_schema = {
            "$ref": "#/components/schemas/"
            + next(n for n in generated["components"]["schemas"] if n.startswith("Problem"))
        }
        for operations in generated["paths"].values():
            for operation in operations.values():
                for code, answer in operation["responses"].items():
                    if code[0] in "45":
                        answer["content"] = {problems.MEDIA_TYPE: {"schema": problem_schema}}
        problem_answer = {"content": {problems.MEDIA_TYPE: {"schema": problem_schema}}}
        generated["paths"]["/api/v1/applications/{application_id}/logs/stream"] = {
            "get": {
                "summary": "Follow the application's log live",
                "description": application_log_stream.__doc__.strip(),
                "operationId": "get__api_v1_applications_{application_id}_logs_stream",
                "tags": ["logs"],
                "parameters": [
                    {"name": "application_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "OK", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    **{code: {"description": text, **problem_answer} for code, text in (
                        ("401", "Unauthorized"), ("404", "Not Found"), ("429", "Too Many Requests")
                    )},
                },
            }
        }  # fmt: skip
        for name in [n for n in generated["components"]["schemas"] if n.startswith("ValidationError")]:
            del generated["components"]["schemas"][name]
        _document = generated
    return _document


@bp.get("/applications")
@spec.validate(query=ApplicationQuery, resp=Response(HTTP_200=ApplicationPage, **ERRORS), tags=APPLICATIONS)
def list_applications(query: ApplicationQuery):
    """List your applications (all of them, for an admin): pages, a status filter, a name search, a sort."""
    found = applications.search(g.api_user, query.q, query.status or "", query.page, query.per_page, query.sort)
    return ApplicationPage(
        items=[_out(a) for a in found.items],
        page=found.page,
        per_page=found.per_page,
        total=found.total,
        pages=found.pages,
    )


@bp.post("/applications")
@spec.validate(json=ApplicationIn, resp=Response(HTTP_201=ApplicationOut, **BODY_ERRORS), tags=APPLICATIONS)
def create_application(json: ApplicationIn):
    """Create an application (stopped). Every rule the form has applies; errors come per field."""
    application = applications.create(g.api_user, json.model_dump())
    location = url_for(".get_application", application_id=application.id)
    return _out(applications.get_for_user(application.id, g.api_user)), 201, {"Location": location}


@bp.get("/applications/<application_id>")
@spec.validate(resp=Response(HTTP_200=ApplicationOut, **ERRORS), tags=APPLICATIONS)
def get_application(application_id):
    """One application, with its status, endpoint, configuration and environment (secrets masked)."""
    return _out(_application(application_id))


@bp.put("/applications/<application_id>")
@spec.validate(
    json=ApplicationIn,
    resp=Response(HTTP_200=ApplicationOut, HTTP_409=Problem, **BODY_ERRORS),
    tags=APPLICATIONS,
)
def update_application(application_id, json: ApplicationIn):
    """Replace an application's fields, while it is stopped or failed (else 409 with its status).
    A secret variable sent with an empty value and its ``secret_id`` keeps its stored value."""
    application = _application(application_id)
    applications.update(application, json.model_dump())
    return _out(applications.get_for_user(application.id, g.api_user))


@bp.delete("/applications/<application_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_409=Problem, **ERRORS), tags=APPLICATIONS)
def delete_application(application_id):
    """Delete an application and what it left (keys, logs, metrics), while stopped or failed."""
    application = _application(application_id)
    applications.delete(application)
    return "", 204


def _transition(application_id, request_transition):
    application = _application(application_id)
    deploy_id = request_transition(application)
    db.session.expire(application)
    return Transition(id=str(application.id), status=application.status, deploy_id=deploy_id), 202


@bp.post("/applications/<application_id>/deploy")
@spec.validate(resp=Response(HTTP_202=Transition, HTTP_409=Problem, HTTP_503=Problem, **ERRORS), tags=APPLICATIONS)
def deploy_application(application_id):
    """Deploy: the application moves to deploying; poll it until running (or failed, with last_error)."""
    return _transition(application_id, deployments.request_deploy)


@bp.post("/applications/<application_id>/stop")
@spec.validate(resp=Response(HTTP_202=Transition, HTTP_409=Problem, HTTP_503=Problem, **ERRORS), tags=APPLICATIONS)
def stop_application(application_id):
    """Stop: in-flight requests finish (within the grace period), then the server exits."""
    return _transition(application_id, _stop)


def _stop(application) -> None:
    deployments.request_stop(application)


def _key_out(row) -> KeyOut:
    return KeyOut.model_validate(row, from_attributes=True)


@bp.get("/applications/<application_id>/keys")
@spec.validate(resp=Response(HTTP_200=KeyList, **ERRORS), tags=["keys"])
def list_keys(application_id):
    """The application's API keys (never the keys themselves)."""
    application = _application(application_id)
    return KeyList(items=[_key_out(key) for key in api_keys.list_keys(application)])


@bp.post("/applications/<application_id>/keys")
@spec.validate(json=KeyIn, resp=Response(HTTP_201=NewKey, HTTP_503=Problem, **BODY_ERRORS), tags=["keys"])
def create_key(application_id, json: KeyIn):
    """Make a key to the application's endpoint; the key is in this answer only."""
    application = _application(application_id)
    key, plain = api_keys.create_key(application, json.label)
    return NewKey(**_key_out(key).model_dump(), key=plain), 201


@bp.delete("/applications/<application_id>/keys/<int:key_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_503=Problem, **ERRORS), tags=["keys"])
def revoke_key(application_id, key_id):
    """Revoke a key: calls with it fail from now on."""
    application = _application(application_id)
    api_keys.revoke_key(application, key_id)
    return "", 204


@bp.get("/applications/<application_id>/logs")
@spec.validate(query=LogQuery, resp=Response(HTTP_200=LogPage, **ERRORS), tags=["logs"])
def application_logs(application_id, query: LogQuery):
    """The application's log, newest page first (lines oldest first within a page); ``before`` pages back."""
    application = _application(application_id)
    found = logs_service.search(
        application, query.level, query.q, before=logs_service.valid_id(query.before), limit=query.limit
    )
    return LogPage(items=[_line_out(line) for line in found.lines], next_before=found.older)


# Not decorated by spectree (it reads every answer's whole body, and this one never ends): document()
# describes it.
@bp.get("/applications/<application_id>/logs/stream")
def application_log_stream(application_id):
    """New log lines as server-sent events (event: line, data: the line as JSON, id: its id), with a
    heartbeat comment while it is quiet. A reconnect with Last-Event-ID (or ?after=<id>) gets exactly the
    lines it missed."""
    application = _application(application_id)
    after = logs_service.valid_id(request.headers.get("Last-Event-ID") or request.args.get("after"))
    heartbeat = current_app.config["LOG_HEARTBEAT_S"]
    db.session.remove()  # no database connection held for the stream's whole life
    return event_stream(logs_service.live_events(application.id, after, heartbeat, _line_event))


def _line_event(line) -> str:
    """A line as the stream's SSE event (one function: the hub renders each line once for all API viewers)."""
    return logs_service.sse_event(json.dumps(_line_out(line)), "line", line.id)


def _line_out(line) -> dict:
    return {
        "id": line.id,
        "time": line.ts,
        "level": line.level,
        "source": line.source,
        "message": line.message,
        "request_id": line.request_id or None,
    }


@bp.get("/applications/<application_id>/metrics")
@spec.validate(query=MetricsQuery, resp=Response(HTTP_200=None, **ERRORS), tags=["metrics"])
def application_metrics(application_id, query: MetricsQuery):
    """The application's metrics over a window: the Monitoring pane's figures, as JSON."""
    application = _application(application_id)
    return jsonify(metrics_service.report(application, query.window))


def _model_out(model) -> ModelOut:
    return ModelOut.model_validate(model, from_attributes=True)


@bp.get("/models")
@spec.validate(resp=Response(HTTP_200=ModelList, **ERRORS), tags=["registry"])
def list_models():
    """The model registry: what applications can serve."""
    return ModelList(items=[_model_out(m) for m in registry.list_models()])


@bp.get("/models/<int:model_id>")
@spec.validate(resp=Response(HTTP_200=ModelOut, **ERRORS), tags=["registry"])
def get_model(model_id):
    """One registry model."""
    return _model_out(registry.get_model(model_id))


@bp.get("/models/<int:model_id>/recommendation")
@spec.validate(resp=Response(HTTP_200=RecommendationOut, **ERRORS), tags=["registry"])
def model_recommendation(model_id):
    """The serving configuration recommended for a model (what the form's Apply fills in), and why."""
    found = applications.recommendation_for(registry.get_model(model_id))
    return RecommendationOut(
        config=found.as_config(),
        fits=found.fits,
        model_memory_bytes=found.model_memory_bytes,
        kv_cache_per_sequence_bytes=found.kv_cache_per_sequence_bytes,
        available_memory_bytes=found.available_memory_bytes,
        reasoning=found.reasoning,
    )


ADMIN_ERRORS = {**ERRORS, "HTTP_403": Problem}


@bp.post("/models")
@spec.validate(
    json=ModelIn,
    resp=Response(HTTP_201=ModelOut, HTTP_422=Problem, **ADMIN_ERRORS, HTTP_415=Problem),
    tags=["registry"],
)
def create_model(json: ModelIn):
    """Register a model (admins). A transformers model's directory is checked on this host."""
    model = registry.create_model(json.model_dump(), acting=g.api_user)
    return _model_out(model), 201, {"Location": url_for(".get_model", model_id=model.id)}


@bp.put("/models/<int:model_id>")
@spec.validate(
    json=ModelIn,
    resp=Response(HTTP_200=ModelOut, HTTP_422=Problem, **ADMIN_ERRORS, HTTP_415=Problem),
    tags=["registry"],
)
def update_model(model_id, json: ModelIn):
    """Replace a registry model's fields (admins)."""
    return _model_out(registry.update_model(model_id, json.model_dump(), acting=g.api_user))


@bp.delete("/models/<int:model_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_409=Problem, **ADMIN_ERRORS), tags=["registry"])
def delete_model(model_id):
    """Remove a model from the registry (admins); refused while applications use it."""
    registry.delete_model(model_id, acting=g.api_user)
    return "", 204


# --- plugins, and an application's chain ----------------------------------------------------------

PLUGINS = ["plugins"]


def _plugin_out(plugin) -> PluginOut:
    secrets = set(plugin_types.secret_settings(plugin.type))
    config = {k: (MASK if k in secrets and v else v) for k, v in (plugin.config or {}).items()}
    return PluginOut(
        id=plugin.id,
        name=plugin.name,
        type=plugin.type,
        description=plugin.description,
        version=plugin.version,
        config=config,
        enabled=plugin.enabled,
        published=plugin.published,
        owner=plugin.owner.email if plugin.owner else None,
        documents=[{"id": d.id, "name": d.name, "size": d.size} for d in plugin.documents],
    )


@bp.get("/plugin-types")
@spec.validate(resp=Response(HTTP_200=PluginTypeList, **ERRORS), tags=PLUGINS)
def list_plugin_types():
    """The five plugin types and the JSON Schema of each one's configuration."""
    return PluginTypeList(
        items=[
            {"name": t.name, "title": t.title, "description": t.description, "config_schema": t.schema}
            for t in plugin_types.TYPES.values()
        ]
    )


@bp.get("/plugins")
@spec.validate(query=PluginQuery, resp=Response(HTTP_200=PluginList, **ERRORS), tags=PLUGINS)
def list_plugins(query: PluginQuery):
    """Your plugins and those admins published (every plugin, for an admin)."""
    found = plugins.search(g.api_user, query.q, query.type, query.enabled)
    return PluginList(items=[_plugin_out(p) for p in found])


@bp.post("/plugins")
@spec.validate(json=PluginIn, resp=Response(HTTP_201=PluginOut, **BODY_ERRORS), tags=PLUGINS)
def create_plugin(json: PluginIn):
    """Create a plugin; its configuration is checked against its type's schema (errors at config.<setting>)."""
    plugin = plugins.create(g.api_user, json.model_dump())
    return _plugin_out(plugin), 201, {"Location": url_for(".get_plugin", plugin_id=plugin.id)}


@bp.get("/plugins/<int:plugin_id>")
@spec.validate(resp=Response(HTTP_200=PluginOut, **ERRORS), tags=PLUGINS)
def get_plugin(plugin_id):
    """One plugin (a secret setting masked)."""
    return _plugin_out(plugins.get_for_user(plugin_id, g.api_user))


@bp.put("/plugins/<int:plugin_id>")
@spec.validate(
    json=PluginIn, resp=Response(HTTP_200=PluginOut, HTTP_403=Problem, HTTP_409=Problem, **BODY_ERRORS), tags=PLUGINS
)
def update_plugin(plugin_id, json: PluginIn):
    """Replace a plugin's fields (a secret setting left out keeps its value); running applications that
    use it get the change live. Disabling it while one runs is refused (409, naming them)."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    return _plugin_out(plugins.update(plugin, g.api_user, json.model_dump()))


@bp.delete("/plugins/<int:plugin_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_403=Problem, HTTP_409=Problem, **ERRORS), tags=PLUGINS)
def delete_plugin(plugin_id):
    """Delete a plugin; refused (409) while an application has it attached."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    plugins.delete(plugin, g.api_user)
    return "", 204


@bp.post("/plugins/<int:plugin_id>/documents")
@spec.validate(json=DocumentIn, resp=Response(HTTP_201=PluginOut, HTTP_403=Problem, **BODY_ERRORS), tags=PLUGINS)
def add_document(plugin_id, json: DocumentIn):
    """Add a text or Markdown document to a knowledge-retrieval plugin."""
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    plugins.add_document(plugin, g.api_user, json.name, json.text.encode())
    return _plugin_out(plugin), 201


@bp.delete("/plugins/<int:plugin_id>/documents/<int:document_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_403=Problem, **ERRORS), tags=PLUGINS)
def delete_document(plugin_id, document_id):
    plugin = plugins.get_changeable(plugin_id, g.api_user)
    plugins.delete_document(plugin, g.api_user, document_id)
    return "", 204


def _chain_out(application) -> Chain:
    return Chain(
        items=[
            ChainStep(
                position=position,
                plugin_id=link.plugin_id,
                name=link.plugin.name,
                type=link.plugin.type,
                enabled=link.enabled,
                plugin_enabled=link.plugin.enabled,
                overrides=link.config or {},
            )
            for position, link in enumerate(plugins.chain(application), 1)
        ]
    )


@bp.get("/applications/<application_id>/plugins")
@spec.validate(resp=Response(HTTP_200=Chain, **ERRORS), tags=PLUGINS)
def application_chain(application_id):
    """The plugins attached to the application, in the order requests pass them."""
    return _chain_out(_application(application_id))


@bp.post("/applications/<application_id>/plugins")
@spec.validate(json=AttachIn, resp=Response(HTTP_201=Chain, HTTP_409=Problem, **BODY_ERRORS), tags=PLUGINS)
def attach_plugin(application_id, json: AttachIn):
    """Attach a plugin you can see at the end of the chain (live on a running application)."""
    application = _application(application_id)
    plugins.attach(application, g.api_user, json.plugin_id)
    return _chain_out(application), 201


@bp.put("/applications/<application_id>/plugins/<int:plugin_id>")
@spec.validate(json=ChainStepIn, resp=Response(HTTP_200=Chain, **BODY_ERRORS), tags=PLUGINS)
def change_chain_step(application_id, plugin_id, json: ChainStepIn):
    """Turn an attached plugin on or off here, set this application's overrides of its settings
    (errors at config.<setting>), or move it one place up or down."""
    application = _application(application_id)
    if json.overrides is not None:
        plugins.set_overrides(application, plugin_id, json.overrides)
    if json.enabled is not None:
        plugins.set_link_enabled(application, plugin_id, json.enabled)
    if json.move is not None:
        plugins.move(application, plugin_id, json.move)
    return _chain_out(application)


@bp.delete("/applications/<application_id>/plugins/<int:plugin_id>")
@spec.validate(resp=Response("HTTP_204", **ERRORS), tags=PLUGINS)
def detach_plugin(application_id, plugin_id):
    """Detach a plugin from the application (live on a running one)."""
    plugins.detach(_application(application_id), plugin_id)
    return "", 204


# --- users (admins) -----------------------------------------------------------------------------

USERS = ["users"]
USER_ERRORS = {**ERRORS, "HTTP_403": Problem}


def _user_out(user, last_login=None) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        admin=user.is_admin,
        disabled=user.disabled_at is not None,
        created_at=user.created_at,
        last_login_at=last_login,
    )


@bp.get("/users")
@spec.validate(resp=Response(HTTP_200=UserList, **USER_ERRORS), tags=USERS)
def list_users():
    """Every user, with role, status and latest login (admins)."""
    return UserList(items=[_user_out(user, at) for user, at in users.list_users(acting=g.api_user)])


@bp.post("/users")
@spec.validate(
    json=UserIn, resp=Response(HTTP_201=UserOut, **USER_ERRORS, HTTP_415=Problem, HTTP_422=Problem), tags=USERS
)
def create_user(json: UserIn):
    """Add a user (admins); the password rules are the page's."""
    return _user_out(users.create_user(json.email, json.password, admin=json.admin, acting=g.api_user)), 201


@bp.put("/users/<int:user_id>")
@spec.validate(
    json=UserChange, resp=Response(HTTP_200=UserOut, HTTP_409=Problem, **USER_ERRORS, HTTP_415=Problem), tags=USERS
)
def change_user(user_id, json: UserChange):
    """Make or unmake an admin, disable or enable an account (admins; never the last admin, nor yourself)."""
    user = users.get_user(user_id, acting=g.api_user)
    if json.admin is not None:
        users.set_admin(user, json.admin, acting=g.api_user)
    if json.disabled is True:
        users.disable(user, acting=g.api_user)
    elif json.disabled is False:
        users.enable(user, acting=g.api_user)
    return _user_out(user, users.last_login_at(user))


@bp.post("/users/<int:user_id>/reset-password")
@spec.validate(resp=Response(HTTP_200=NewPassword, **USER_ERRORS), tags=USERS)
def reset_user_password(user_id):
    """A new password for the user, in this answer only; their logins end (admins)."""
    user = users.get_user(user_id, acting=g.api_user)
    return NewPassword(password=users.reset_password(user, acting=g.api_user))
