"""/api/v1/…/limits, …/usage, /audit and /hosts: an application's and a person's limits, usage per day and
key, the audit log, and the hosts."""

from flask import g
from spectree import Response

from ..services import audit, hosts, quotas, users
from ..services import usage as usage_service
from . import ADMIN_BODY_ERRORS, ADMIN_ERRORS, BODY_ERRORS, ERRORS, bp, spec
from .applications import visible_application
from .keys import limits_out
from .quota_schemas import AuditPage, AuditQuery, HostList, Limits, LimitsOut, UsageQuery, UsageReport
from .schemas import Problem

LIMITS, USAGE = ["limits"], ["usage"]


@bp.get("/applications/<application_id>/limits")
@spec.validate(resp=Response(HTTP_200=LimitsOut, **ERRORS), tags=LIMITS)
def application_limits(application_id):
    """The application's own limits (across its keys)."""
    return limits_out(visible_application(application_id))


@bp.put("/applications/<application_id>/limits")
@spec.validate(json=Limits, resp=Response(HTTP_200=LimitsOut, HTTP_503=Problem, **BODY_ERRORS), tags=LIMITS)
def set_application_limits(application_id, json: Limits):
    """Change the application's limits (a limit left out stays; 0 or null removes it)."""
    application = visible_application(application_id)
    return limits_out(quotas.set_application_limits(application, json.model_dump(exclude_unset=True)))


@bp.put("/users/<int:user_id>/limits")
@spec.validate(json=Limits, resp=Response(HTTP_200=LimitsOut, HTTP_503=Problem, **ADMIN_BODY_ERRORS), tags=LIMITS)
def set_user_limits(user_id, json: Limits):
    """Change a person's limits, across all their applications (admins)."""
    user = users.get_user(user_id, acting=g.api_user)
    return limits_out(quotas.set_user_limits(user, json.model_dump(exclude_unset=True), acting=g.api_user))


@bp.get("/applications/<application_id>/usage")
@spec.validate(query=UsageQuery, resp=Response(HTTP_200=UsageReport, **ERRORS), tags=USAGE)
def application_usage(application_id, query: UsageQuery):
    """Requests and tokens of the application per day and key (exact: the limits' own accounting)."""
    application = visible_application(application_id)
    return UsageReport(**usage_service.as_dict(usage_service.for_application(application, query.days, wait=True)))


@bp.get("/usage")
@spec.validate(query=UsageQuery, resp=Response(HTTP_200=UsageReport, **ERRORS), tags=USAGE)
def usage_overview(query: UsageQuery):
    """Usage across applications: an admin's of everyone (or of ``user_id``), a member's of their own."""
    report = usage_service.overview(g.api_user, query.days, query.user_id, wait=True)
    return UsageReport(**usage_service.as_dict(report))


@bp.get("/audit")
@spec.validate(query=AuditQuery, resp=Response(HTTP_200=AuditPage, **ERRORS), tags=["audit"])
def audit_log(query: AuditQuery):
    """The audit log, newest first: an admin's of every change, a member's of changes to their own things."""
    filters = audit.Filters(**query.model_dump())
    return AuditPage(items=[audit.as_dict(entry) for entry in audit.entries(g.api_user, filters)])


@bp.get("/hosts")
@spec.validate(resp=Response(HTTP_200=HostList, **ADMIN_ERRORS), tags=["hosts"])
def list_hosts():
    """Every host that announced itself: up or down, its CPUs, memory, GPUs, engines and replicas (admins)."""
    return HostList(items=[host.as_dict() for host in hosts.list_hosts(g.api_user)])
