"""The Hosts page (admins): every worker host, up or down, with its CPUs, memory, GPUs, engines and the
replicas it runs, refreshed live."""

from flask import Blueprint
from flask_login import current_user, login_required

from ..services import hosts
from ..web import admin_required, render

bp = Blueprint("hosts", __name__, url_prefix="/hosts")


@bp.get("/")
@login_required
@admin_required(hosts.ADMIN_ONLY)
def index():
    """The page, or (htmx, every few seconds) its table alone."""
    return render("hosts/index.html", "hosts/_table.html", hosts=hosts.list_hosts(current_user))
