"""How the API answers what went wrong in a route: always a problem document (problems.py), never a page."""

from ..extensions import db
from ..services import ServiceError
from . import bp, problems


@bp.errorhandler(ServiceError)
def service_error(error: ServiceError):
    """A service's refusal, raised anywhere in a route, as its problem document (the routes hold no
    try/except of their own: NotFound 404, Forbidden 403, ...); the transaction it left is rolled back."""
    db.session.rollback()
    return problems.from_service_error(error)


@bp.errorhandler(problems.HTTPException)
def http_error(error):
    """Any HTTP error inside the API (a body that is not JSON, an unknown method) as a problem document."""
    return problems.from_http_error(error)
