"""Bring an installation up to date: schema, first admin, demo data. Run by `flask setup` and app.py."""

import os

import flask_migrate
import redis
from flask import current_app

from . import api_keys, demo, users


def prepare() -> list[str]:
    """Migrate, create the first admin if there are no users, publish every key and route for the
    gateways, seed demo data if asked.

    Returns lines worth printing (the generated admin password appears here, and only here).
    """
    flask_migrate.upgrade()
    lines = []
    created = users.ensure_first_admin(os.environ.get("LLMAPP_ADMIN_EMAIL"), os.environ.get("LLMAPP_ADMIN_PASSWORD"))
    if created:
        user, generated = created
        if generated:
            lines.append(f"Created the first admin: {user.email} / password: {generated}  (shown once; keep it)")
        else:
            lines.append(f"Created the first admin {user.email} (password from LLMAPP_ADMIN_PASSWORD).")
    try:
        api_keys.publish_everything()
    except redis.RedisError as e:
        lines.append(f"Redis is unreachable ({e}): the gateway learns routes and keys once it is back.")
    if current_app.config["DEMO"]:
        seeded = demo.seed()
        lines.append(
            f"Demo data (LLMAPP_DEMO=1): log in as {demo.DEMO_EMAIL} / {demo.DEMO_PASSWORD}"
            + (
                f"; created {seeded['models']} models, {seeded['applications']} applications."
                if any(seeded.values())
                else "."
            )
        )
    return lines
