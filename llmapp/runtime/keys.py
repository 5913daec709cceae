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


class KeyChecker:
    """Checks keys against Redis on every request, so a new or revoked key applies at once.

    The last-used time is written at most once a second per key: one Redis round trip per request, not two.
    """

    def __init__(self, connection, application_id):
        self.connection, self.application_id = connection, application_id
        self.recorded: dict[bytes, float] = {}

    async def check(self, key: str) -> str | None:
        """The key's id when it is valid."""
        key_id = await self.connection.hget(keys_key(self.application_id), digest(key))
        if key_id is None:
            return None
        now = time.time()
        if now - self.recorded.get(key_id, 0) >= 1:
            self.recorded[key_id] = now
            await self.connection.hset(used_key(self.application_id), key_id, f"{now:.0f}")
        return key_id.decode()
