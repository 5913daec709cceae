from flask import render_template
from flask_login import login_required

from ..services import plugins
from . import bp


@bp.get("/")
@login_required
def index():
    """The App Center's Plugins tab: registered plugins, read-only for now."""
    return render_template("plugins/index.html", plugins=plugins.list_plugins())
