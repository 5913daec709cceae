"""The platform's REST API, /api/v1: the operations of the pages as JSON, for scripts and CI.

Authenticated by personal access tokens only (``Authorization: Bearer``); a session cookie never
authenticates here, so CSRF does not apply. Rate limited per token. Errors are RFC 9457 problem
details. The OpenAPI 3.1 document (/api/v1/openapi.json) is generated from the routes and their
pydantic models by spectree: chosen because it attaches to a plain Flask app and its blueprints (the
pages stay as they are), validates with pydantic v2, and writes OpenAPI 3.1 by default; apiflask
would replace the app class, and flask-smorest writes 3.0 from marshmallow schemas.

One module per resource, each a thin adapter over the same services the pages, the jobs and the CLI
call: applications.py (and their deploy and stop), keys.py, quotas.py (limits and usage), logs.py (the
log and its live stream), metrics.py, registry.py (/models), plugins.py (plugin types, plugins, their
documents), chains.py (an application's plugins), users.py. Beside them: auth.py (tokens, the rate
limit, the checks every body passes), errors.py (a refusal or an HTTP error as a problem document,
problems.py), openapi.py (the document), schemas.py and quota_schemas.py (the bodies' shapes) and
page.py (the reference page in the UI).
"""

from flask import Blueprint
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData

from ..extensions import csrf
from . import problems
from .schemas import Problem

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)

spec = SpecTree(
    "flask",
    title="llmapp API",
    version="1",
    description="Create, deploy, call and watch LLM applications. Authenticate with a personal access "
    "token (Account page, or flask tokens create): Authorization: Bearer <token>.",
    mode="strict",
    page_templates={},  # no CDN-loaded UI pages: the platform's own API page reads the document
    security_schemes=[
        SecurityScheme(
            name="token",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", description="A personal access token."),
        )
    ],
    security={"token": []},
    before=problems.on_invalid_request,
    validation_error_status=422,
)

# The error answers every operation documents (each a problem document, see openapi.py).
ERRORS = {"HTTP_401": Problem, "HTTP_404": Problem, "HTTP_429": Problem}
BODY_ERRORS = {**ERRORS, "HTTP_400": Problem, "HTTP_415": Problem, "HTTP_422": Problem}  # they read a JSON body
ADMIN_ERRORS = {**ERRORS, "HTTP_403": Problem}  # operations only admins may do (the service refuses: 403)
ADMIN_BODY_ERRORS = {**BODY_ERRORS, "HTTP_403": Problem}

# Routes register in the order they are imported, and the reference page lists them in that order:
# keep it (applications and what hangs on them, the registry, plugins, users), not the alphabet's.
# isort: off
from . import auth, errors  # noqa: E402,F401
from . import applications, keys, quotas, releases, logs, metrics, registry, plugins, chains, users  # noqa: E402,F401
from . import openapi  # noqa: E402,F401
# isort: on
