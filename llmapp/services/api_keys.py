"""API keys of an application's endpoint: made here, shown once, stored hashed, revocable.

A change is published to Redis (where running servers look keys up) before it is committed, so the
database and the servers never disagree: when Redis is unreachable nothing changes and the user is
told so (no key that nobody saw, no revoked key still accepted).
"""

from datetime import UTC

from flask_babel import gettext as _

from .. import keyspace, queues, secrets_box
from ..extensions import db
from ..models import MAX_ID, ApiKey, Application, utcnow
from ..runtime import keys as runtime_keys
from . import NotFound, publish_before_commit, routing

PUBLISH_LOCK_S = 10  # the longest a publish of one application's keys may hold its lock


def publishing(application_id):
    """One publisher of an application's keys at a time: each reads the keys and writes them whole, so a
    publish that read before another's commit must not write after it (it would drop a new key)."""
    return queues.connection().lock(
        keyspace.lock("keys", application_id), timeout=PUBLISH_LOCK_S, blocking_timeout=PUBLISH_LOCK_S
    )


def publish_and_commit(application: Application, failure: str) -> None:
    """Publish the keys as the session holds them, then commit, with no other publish in between."""

    def publish_then_commit():
        with publishing(application.id):
            _publish(application)
            db.session.commit()

    publish_before_commit(publish_then_commit, failure)


def publish_locked(application: Application) -> None:
    """Publish the keys as the session holds them, under the application's ``publishing`` lock that the
    caller holds until it commits (services/quotas.py: a person's limits reach all their applications)."""
    _publish(application)


def publish_keys(application: Application) -> None:
    """Give the running servers and the gateways the application's active keys, as committed."""
    with publishing(application.id):
        db.session.commit()  # read what is committed now, not an older snapshot of this session's
        _publish(application)


def publish_everything() -> None:
    """Every application's keys and route, as the database holds them (at start-up and after an
    upgrade: what an older platform published lacked the gateway's signed entries)."""
    for application in db.session.scalars(db.select(Application)).all():
        publish_keys(application)
    routing.publish_all()


def _publish(application: Application) -> None:
    from .quotas import policy

    now = utcnow()
    active = db.session.scalars(
        db.select(ApiKey).where(
            ApiKey.application_id == application.id,
            ApiKey.revoked_at.is_(None),
            db.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    ).all()
    runtime_keys.publish(
        queues.connection(),
        application.id,
        {
            key.key_hash: (key.id, key.label, key.expires_at and key.expires_at.replace(tzinfo=UTC).timestamp())
            for key in active
        },
        application_key=secrets_box.application_key(application.id),
        route_key=routing.signing_key(),
        quotas=policy(application, active),
    )


MAX_LABEL = 100  # a longer label is cut, not refused: it is only a reminder


def create_key(application: Application, label: str = "", limits: dict | None = None) -> tuple[ApiKey, str]:
    """A new key, with ``limits`` (services/quotas.py: by short name) if given; the plain key is
    returned here once and never stored.

    :raise FieldErrors: a limit out of range. :raise ServiceError: Redis is unreachable (no key was made).
    """
    from .quotas import assign, checked

    checked_limits = checked(limits or {})
    plain = runtime_keys.generate()
    key = ApiKey(
        application_id=application.id,
        label=label.strip()[:MAX_LABEL],
        key_hash=runtime_keys.digest(plain),
        prefix=plain[:10],
    )
    assign(key, checked_limits)
    db.session.add(key)
    publish_and_commit(application, _("The key was not created"))
    return key, plain


def revoke_key(application: Application, key_id: int) -> ApiKey:
    """:raise NotFound: no such key on this application.
    :raise ServiceError: Redis is unreachable (the key stays valid).
    """
    key = find_key(application, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        publish_and_commit(application, _("The key was not revoked"))
    return key


def find_key(application: Application, key_id: int) -> ApiKey:
    """One of the application's keys (revoked ones too). :raise NotFound: it has no such key."""
    key = None
    if 1 <= key_id <= MAX_ID:  # a larger id names no key (and would overflow the column)
        key = db.session.scalar(db.select(ApiKey).where(ApiKey.id == key_id, ApiKey.application_id == application.id))
    if key is None:
        raise NotFound(_("No such key."))
    return key


def list_keys(application: Application) -> list[ApiKey]:
    return list(
        db.session.scalars(
            db.select(ApiKey)
            .where(ApiKey.application_id == application.id, ApiKey.purpose == "user")
            .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())
        )
    )
