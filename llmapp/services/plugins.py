"""Plugins registered on the platform. Attaching and configuring them is a later issue."""

from sqlalchemy import select

from ..extensions import db
from ..models import Plugin


def list_plugins() -> list[Plugin]:
    return list(db.session.scalars(select(Plugin).order_by(Plugin.name)))
