"""/api/v1/applications/<id>/metrics: the Monitoring pane's figures over a window, as JSON."""

from flask import jsonify
from spectree import Response

from ..services import metrics as metrics_service
from . import ERRORS, bp, spec
from .applications import visible_application
from .schemas import MetricsQuery


@bp.get("/applications/<application_id>/metrics")
@spec.validate(query=MetricsQuery, resp=Response(HTTP_200=None, **ERRORS), tags=["metrics"])
def application_metrics(application_id, query: MetricsQuery):
    """The application's metrics over a window: the Monitoring pane's figures, as JSON."""
    application = visible_application(application_id)
    return jsonify(metrics_service.report(application, query.window))
