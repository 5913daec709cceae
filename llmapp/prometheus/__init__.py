"""For Prometheus: the list of running app servers in its http_sd format (one scrape job follows every
deploy and stop). It answers the platform's metrics token, never a session cookie."""

import hmac

from flask import Blueprint, abort, jsonify, request

from ..extensions import csrf
from ..runtime.keys import bearer_token
from ..services import metrics

bp = Blueprint("prometheus", __name__, url_prefix="/prometheus")
csrf.exempt(bp)


@bp.get("/targets")
def targets():
    """Every running application server, labelled with its application and host.

    :raise 401: without the metrics token (Authorization: Bearer <token>).
    """
    token = bearer_token(request.headers.get("Authorization"))
    if not token or not hmac.compare_digest(token.encode(), metrics.metrics_token().encode()):
        abort(401)
    return jsonify(metrics.prometheus_targets())
