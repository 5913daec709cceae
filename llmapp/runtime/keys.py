"""API keys of applications as the app servers see them: hashes in Redis, so a change applies at once."""

import hashlib
import secrets
import time

PREFIX = "llm-"


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_key(application_id) -> str:
    return f"llmapp:keys:{application_id}"


def used_key(application_id) -> str:
    return f"llmapp:keys-used:{application_id}"


def publish(connection, application_id, active: dict[str, int]) -> None:
    """Replace the application's published keys with ``active`` ({digest: key id}), atomically."""
    with connection.pipeline() as pipe:
        pipe.delete(keys_key(application_id))
        if active:
            pipe.hset(keys_key(application_id), mapping=active)
        pipe.execute()


async def check(connection, application_id, key: str) -> str | None:
    """The key's id when it is valid; records when it was used."""
    key_id = await connection.hget(keys_key(application_id), digest(key))
    if key_id is None:
        return None
    await connection.hset(used_key(application_id), key_id, f"{time.time():.0f}")
    return key_id.decode()
