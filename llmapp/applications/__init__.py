from flask import Blueprint

bp = Blueprint("applications", __name__, url_prefix="/applications")

from . import chain_routes, key_routes, log_routes, playground_routes, release_routes, routes  # noqa: E402,F401
