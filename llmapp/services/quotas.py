"""Quotas: requests and tokens per minute, tokens per day and per month, on an API key, an application, or
a user across their applications. Set here (pages, API and CLI alike), published with the keys, enforced
by the app servers in Redis (llmapp/runtime/quotas.py), so a change applies to the next request.
"""

import contextlib

from flask_babel import gettext as _

from ..extensions import db
from ..i18n import _l, counted, format_number
from ..models import ApiKey, Application, Limited, User
from . import NotFound, listing, publish_before_commit, refuse, require_admin
from . import api_keys as keys_service

# Each limit: its short name (the runtime's, the API's and the CLI's), its column, and what it reads as.
FIELDS = {"rpm": "limit_rpm", "tpm": "limit_tpm", "day": "limit_daily_tokens", "month": "limit_monthly_tokens"}
LABELS = {
    "rpm": _l("Requests per minute"),
    "tpm": _l("Tokens per minute"),
    "day": _l("Tokens per day"),
    "month": _l("Tokens per month"),
}
MAX_LIMIT = 10**11  # past this a limit limits nothing (and a rate's bucket would lose exactness)
CACHE_HIT_COST = _l("A cache hit counts as a request, and costs no tokens: no model ran for it.")
ADMIN_ONLY = _l("Only an admin can set a person's limits.")


def checked(values: dict) -> dict[str, int | None]:
    """The limits ``values`` gives (by short name; None, "" or 0 mean no limit; one left out is not in
    the answer, so it stays as it is), checked.

    :raise FieldErrors: a limit that is not a whole number from 1 to 10^11.
    """
    errors, limits = {}, {}
    for kind in FIELDS:
        if kind not in values:
            continue
        value = values[kind]
        if value in (None, "", 0):
            limits[kind] = None
            continue
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not 0 <= number <= MAX_LIMIT:
            errors[kind] = [
                _(
                    "%(limit)s: a whole number from 1 to %(max)s, or empty for no limit.",
                    limit=LABELS[kind],
                    max=format_number(MAX_LIMIT),
                )
            ]
        else:
            limits[kind] = number or None
    refuse(errors)
    return limits


def assign(target: Limited, limits: dict[str, int | None]) -> dict[str, tuple]:
    """Set ``target``'s limits; what changed, as {kind: (before, after)} (for the audit log)."""
    changed = {}
    for kind, column in FIELDS.items():
        if kind in limits and getattr(target, column) != limits[kind]:
            changed[kind] = (getattr(target, column), limits[kind])
            setattr(target, column, limits[kind])
    return changed


def policy(application: Application, active_keys) -> dict:
    """What the application's servers are given (runtime/quotas.py, Policy): its limits, its owner's
    and each active key's; always the owner, whom its usage is counted to."""
    owner = db.session.get(User, application.created_by_id)
    return {
        "application": {"name": application.name, "limits": application.limits},
        "user": {"id": str(owner.id), "name": owner.email, "limits": owner.limits},
        "keys": {str(key.id): key.limits for key in active_keys if key.limits},
    }


def set_key_limits(application: Application, key_id: int, values: dict) -> ApiKey:
    """:raise NotFound: no such key. :raise FieldErrors: a limit out of range.
    :raise ServiceError: Redis is unreachable (nothing changed)."""
    limits = checked(values)
    key = keys_service.find_key(application, key_id)
    if key.purpose != "user":  # the playground's own keys are the platform's
        raise NotFound(_("No such key."))
    if key.revoked_at is not None:
        raise NotFound(_("No such key: it was revoked."))
    if assign(key, limits):
        keys_service.publish_and_commit(application, _("The key's limits were not changed"))
    return key


def set_application_limits(application: Application, values: dict) -> Application:
    """:raise FieldErrors: a limit out of range. :raise ServiceError: Redis is unreachable (nothing changed)."""
    limits = checked(values)
    if assign(application, limits):
        keys_service.publish_and_commit(application, _("The application's limits were not changed"))
    return application


def set_user_limits(user: User, values: dict, *, acting) -> User:
    """A person's limits, across all their applications (admins only).

    :raise Forbidden: ``acting`` is not an admin. :raise FieldErrors: a limit out of range.
    """
    require_admin(acting, ADMIN_ONLY)
    limits = checked(values)
    if assign(user, limits):
        owned = db.session.scalars(
            db.select(Application).where(Application.created_by_id == user.id).order_by(Application.id)
        ).all()
        with contextlib.ExitStack() as held:
            # Every application's publish lock, in one order, until the commit: no other publish of theirs
            # writes what it read before this change after it (which would bring back the old limits).
            for application in owned:
                held.enter_context(keys_service.publishing(application.id))

            def publish_all():
                try:
                    for application in owned:
                        keys_service.publish_locked(application)
                except Exception:
                    db.session.rollback()  # what was published already goes back to what is committed
                    for application in owned:
                        with contextlib.suppress(Exception):
                            keys_service.publish_locked(application)
                    raise

            publish_before_commit(publish_all, _("Nothing changed"))
            db.session.commit()
    return user


def amount(value: int, kind: str) -> str:
    """ "5 requests per minute", "1 token per day", as the page's language writes it (the app servers'
    own, runtime/quotas.amount, stays English: it is in their answers and logs)."""
    if kind == "rpm":
        return counted(value, "%(count)s request per minute", "%(count)s requests per minute")
    if kind == "tpm":
        return counted(value, "%(count)s token per minute", "%(count)s tokens per minute")
    if kind == "day":
        return counted(value, "%(count)s token per day", "%(count)s tokens per day")
    return counted(value, "%(count)s token per month", "%(count)s tokens per month")


def describe(limits: dict[str, int]) -> str:
    """ "5 requests per minute, 10,000 tokens per day"; "no limits"."""
    return listing(amount(value, kind) for kind, value in limits.items()) or _("no limits")
