"""/api/v1/applications: list, create, read, replace and delete applications, and deploy and stop them.

Objects are the token user's as in the pages: another member's application answers 404, the same as
one that does not exist. A refused transition is 409 with the application's status now.
"""

from flask import g, url_for
from spectree import Response

from ..extensions import db
from ..services import applications, deployments, releases, routing, stops
from . import BODY_ERRORS, ERRORS, bp, spec
from .schemas import ApplicationIn, ApplicationOut, ApplicationPage, ApplicationQuery, Problem, Transition

APPLICATIONS = ["applications"]


def visible_application(application_id):
    """The token user's application (any, for an admin).

    :raise NotFound: no such application, or another member's (a 404 problem).
    """
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
        release=application.deployed_release,
        rolling_to=application.rolling_to,
        canary_release=application.canary_release,
        canary_percent=application.canary_percent,
        gateway=routing.gateway_url(),
    )


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
@spec.validate(
    json=ApplicationIn, resp=Response(HTTP_201=ApplicationOut, HTTP_409=Problem, **BODY_ERRORS), tags=APPLICATIONS
)
def create_application(json: ApplicationIn):
    """Create an application (stopped). Every rule the form has applies; errors come per field."""
    application = applications.create(g.api_user, json.model_dump())
    location = url_for(".get_application", application_id=application.id)
    return _out(applications.get_for_user(application.id, g.api_user)), 201, {"Location": location}


@bp.get("/applications/<application_id>")
@spec.validate(resp=Response(HTTP_200=ApplicationOut, **ERRORS), tags=APPLICATIONS)
def get_application(application_id):
    """One application, with its status, endpoint, configuration and environment (secrets masked)."""
    return _out(visible_application(application_id))


@bp.put("/applications/<application_id>")
@spec.validate(
    json=ApplicationIn,
    resp=Response(HTTP_200=ApplicationOut, HTTP_409=Problem, **BODY_ERRORS),
    tags=APPLICATIONS,
)
def update_application(application_id, json: ApplicationIn):
    """Change an application's fields, while it is stopped or failed (else 409 with its status). A field
    left out keeps its value (``env`` left out keeps every variable; sent, it is the whole list). A
    secret variable sent with an empty value and its ``secret_id`` keeps its stored value."""
    application = visible_application(application_id)
    applications.update(application, json.model_dump(exclude_unset=True), g.api_user)
    return _out(applications.get_for_user(application.id, g.api_user))


@bp.delete("/applications/<application_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_409=Problem, **ERRORS), tags=APPLICATIONS)
def delete_application(application_id):
    """Delete an application and what it left (keys, logs, metrics), while stopped or failed."""
    application = visible_application(application_id)
    applications.delete(application)
    return "", 204


def _transition(application_id, request_transition):
    application = visible_application(application_id)
    deploy_id = request_transition(application)
    db.session.expire(application)
    release = application.rolling_to or (releases.newest(application.id).number if deploy_id else None)
    return Transition(id=str(application.id), status=application.status, deploy_id=deploy_id, release=release), 202


@bp.post("/applications/<application_id>/deploy")
@spec.validate(resp=Response(HTTP_202=Transition, HTTP_409=Problem, HTTP_503=Problem, **ERRORS), tags=APPLICATIONS)
def deploy_application(application_id):
    """Deploy its newest release: a stopped or failed application moves to deploying (poll it until
    running, or failed with last_error); a running one rolls the release out beside the one serving
    (poll until ``rolling_to`` is null: ``release`` then says which serves, ``last_error`` why not)."""
    return _transition(application_id, deployments.request_deploy)


@bp.post("/applications/<application_id>/stop")
@spec.validate(resp=Response(HTTP_202=Transition, HTTP_409=Problem, HTTP_503=Problem, **ERRORS), tags=APPLICATIONS)
def stop_application(application_id):
    """Stop: in-flight requests finish (within the grace period), then the server exits."""
    return _transition(application_id, _stop)


def _stop(application) -> None:
    stops.request_stop(application)
