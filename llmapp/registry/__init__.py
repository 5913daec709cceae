from flask import Blueprint

bp = Blueprint("registry", __name__, url_prefix="/models")

from . import routes  # noqa: E402,F401
