"""Personal access tokens: a user's keys to the REST API (/api/v1), for scripts and CI.

A token is shown once, when it is made; only its SHA-256 digest is stored (a token is random, 256 bits:
a fast digest is enough, unlike a password). It acts as its user, with their rights, until it is revoked,
it expires, or its user is disabled (disabling revokes it). Its last use is written at most once a minute.
"""

import hashlib
import secrets
from datetime import timedelta

from flask_babel import gettext as _
from sqlalchemy import select

from ..extensions import db
from ..models import AccessToken, User, utcnow
from . import Invalid, NotFound

PREFIX = "llmapp_pat_"
MAX_EXPIRY_DAYS = 366
LAST_USED_EVERY = timedelta(minutes=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(user: User, name: str, expires_days: int | None) -> tuple[AccessToken, str]:
    """A new token for ``user``; the plain token is returned here once and never stored.

    :raise Invalid: no name, too long, or an expiry out of 1–366 days (``field`` says which).
    """
    name = (name or "").strip()
    if not name:
        raise Invalid(_("Give the token a name, e.g. the script or CI job that uses it."), "name")
    if len(name) > 100:
        raise Invalid(_("At most %(count)s characters.", count=100), "name")
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRY_DAYS:
        raise Invalid(_("Between 1 and %(count)s days, or no expiry.", count=MAX_EXPIRY_DAYS), "expires_days")
    plain = PREFIX + secrets.token_urlsafe(32)
    token = AccessToken(
        user_id=user.id,
        name=name,
        token_hash=digest(plain),
        prefix=plain[: len(PREFIX) + 6],
        expires_at=utcnow() + timedelta(days=expires_days) if expires_days else None,
    )
    db.session.add(token)
    db.session.commit()
    return token, plain


def list_for(user: User) -> list[AccessToken]:
    """The user's tokens, the active ones first, newest first."""
    query = select(AccessToken).where(AccessToken.user_id == user.id)
    return list(db.session.scalars(query.order_by(AccessToken.revoked_at.is_not(None), AccessToken.id.desc())))


def revoke(user: User, token_id: int) -> AccessToken:
    """:raise NotFound: no such token of ``user``'s (another user's looks the same)."""
    token = db.session.scalar(select(AccessToken).where(AccessToken.id == token_id, AccessToken.user_id == user.id))
    if token is None:
        raise NotFound(_("No such token."))
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.commit()
    return token


def revoke_all(user: User) -> int:
    """Revoke every active token of ``user`` (in the caller's transaction); how many there were."""
    active = db.session.scalars(
        select(AccessToken).where(AccessToken.user_id == user.id, AccessToken.revoked_at.is_(None))
    ).all()
    for token in active:
        token.revoked_at = utcnow()
    return len(active)


def authenticate(plain: str) -> User | None:
    """The user a token acts as; None when it is unknown, revoked, expired, or its user is disabled."""
    if not plain.startswith(PREFIX):
        return None
    token = db.session.scalar(select(AccessToken).where(AccessToken.token_hash == digest(plain)))
    now = utcnow()
    if token is None or token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
        return None
    if not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        token.last_used_at = now
        db.session.commit()
    token.user.token_name = token.name  # who acted, in the audit log
    return token.user


def state(token: AccessToken) -> str:
    """active, expired or revoked (for pages and the CLI)."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= utcnow():
        return "expired"
    return "active"
