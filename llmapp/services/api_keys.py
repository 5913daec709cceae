"""API keys of an application's endpoint: made here, shown once, stored hashed, revocable.

A change is published to Redis (where running servers look keys up) before it is committed, so the
database and the servers never disagree: when Redis is unreachable nothing changes and the user is
told so (no key that nobody saw, no revoked key still accepted).
"""

from ..extensions import db
from ..models import MAX_ID, ApiKey, Application, utcnow
from ..runtime import keys as runtime_keys
from . import NotFound, deployments, publish_before_commit


def publish_and_commit(application: Application, failure: str) -> None:
    publish_before_commit(lambda: deployments.publish_keys(application), failure)
    db.session.commit()


MAX_LABEL = 100  # a longer label is cut, not refused: it is only a reminder


def create_key(application: Application, label: str = "") -> tuple[ApiKey, str]:
    """A new key; the plain key is returned here once and never stored.

    :raise ServiceError: Redis is unreachable (no key was made).
    """
    plain = runtime_keys.generate()
    key = ApiKey(
        application_id=application.id,
        label=label.strip()[:MAX_LABEL],
        key_hash=runtime_keys.digest(plain),
        prefix=plain[:10],
    )
    db.session.add(key)
    publish_and_commit(application, "The key was not created")
    return key, plain


def revoke_key(application: Application, key_id: int) -> ApiKey:
    """:raise NotFound: no such key on this application.
    :raise ServiceError: Redis is unreachable (the key stays valid).
    """
    key = None
    if 1 <= key_id <= MAX_ID:  # a larger id names no key (and would overflow the column)
        key = db.session.scalar(db.select(ApiKey).where(ApiKey.id == key_id, ApiKey.application_id == application.id))
    if key is None:
        raise NotFound("No such key.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        publish_and_commit(application, "The key was not revoked")
    return key


def list_keys(application: Application) -> list[ApiKey]:
    return list(
        db.session.scalars(
            db.select(ApiKey)
            .where(ApiKey.application_id == application.id, ApiKey.purpose == "user")
            .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())
        )
    )
