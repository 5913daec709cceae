from flask import Blueprint

bp = Blueprint("plugins", __name__, url_prefix="/plugins")

from . import routes  # noqa: E402,F401
