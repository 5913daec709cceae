"""API keys of an application's endpoint: made here, shown once, stored hashed, revocable."""

from ..extensions import db
from ..models import ApiKey, Application, utcnow
from ..runtime import keys as runtime_keys
from . import NotFound, deployments


def create_key(application: Application, label: str = "") -> tuple[ApiKey, str]:
    """A new key; the plain key is returned here once and never stored."""
    plain = runtime_keys.generate()
    key = ApiKey(
        application_id=application.id, label=label.strip()[:100], key_hash=runtime_keys.digest(plain), prefix=plain[:10]
    )
    db.session.add(key)
    db.session.commit()
    deployments.publish_keys(application)  # a running server accepts it at once
    return key, plain


def revoke_key(application: Application, key_id: int) -> ApiKey:
    """:raise NotFound: no such key on this application."""
    key = db.session.scalar(db.select(ApiKey).where(ApiKey.id == key_id, ApiKey.application_id == application.id))
    if key is None:
        raise NotFound("No such key.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.session.commit()
        deployments.publish_keys(application)  # a running server refuses it at once
    return key


def list_keys(application: Application) -> list[ApiKey]:
    return list(
        db.session.scalars(
            db.select(ApiKey)
            .where(ApiKey.application_id == application.id)
            .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())
        )
    )
