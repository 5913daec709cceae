"""API keys of applications as the app servers see them: hashes in Redis, so a change applies at once.

The platform publishes an application's active keys (digest → "signature.id:label", or
"signature.id@expiry:label" for a key that expires at that unix time); its server looks each request's
key up there. Every server can reach Redis, so each entry is signed with a key derived from the
application's own key (``entry_key``; its server gets that in its environment, no other server does): an
entry another server wrote lets nobody in. While Redis is unreachable the server keeps serving the keys
it has already seen (and the set it loaded when it became ready); a key it has never seen is answered
503, never let in unchecked.
"""

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass

import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import keyspace

PREFIX = "llm-"
log = logging.getLogger("llmapp.server")


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authorization(header: str | None) -> tuple[str, str]:
    """An ``Authorization`` header's scheme (lower case) and credentials (stripped); ("", "") for none.

    The one parser of the header, on both sides: the app servers (API keys, the platform's metrics
    token) and the platform (personal access tokens, the Prometheus target list) import it from here.
    """
    scheme, _, credentials = (header or "").partition(" ")
    return scheme.lower(), credentials.strip()


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; "" for none, a blank one or another scheme."""
    scheme, token = authorization(header)
    return token if scheme == "bearer" else ""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    label: str
    expires_at: float | None = None  # unix time

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


# Replace one application's keys and their entries in the gateway's index, in one step: the index
# never names a key of the application's that is gone, nor misses one it holds. An index entry is
# "signature.application id" (llmapp/gateway/table.py: key_route); ARGV: the id, the signed quotas
# entry ('' for none), then for each key its digest, its value here and its index entry.
_PUBLISH = """
local suffix = '.' .. ARGV[1]
for _, old in ipairs(redis.call('HKEYS', KEYS[1])) do
    local entry = redis.call('HGET', KEYS[2], old)
    if entry and string.sub(entry, -#suffix) == suffix then redis.call('HDEL', KEYS[2], old) end
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'quotas', ARGV[2]) end
for i = 3, #ARGV, 3 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
end
return 0
"""


def entry_key(application_key: bytes) -> bytes:
    """What signs an application's key entries, from the application's own key (secrets_box.application_key
    on the platform, the server's LLMAPP_CHAIN_KEY)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"llmapp api key entries").derive(application_key)


def _signature(key: bytes, key_digest: str, value: str) -> str:
    return hmac.new(key, f"{key_digest}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


def _verified(key: bytes, key_digest: str, entry: bytes) -> str | None:
    """An entry's value, when the platform signed it for this key; None otherwise."""
    signature, _, value = entry.decode(errors="replace").partition(".")
    expected = _signature(key, key_digest, value).encode()
    return value if hmac.compare_digest(expected, signature.encode(errors="replace")) else None


QUOTAS_FIELD = "quotas"  # the application's limits (runtime/quotas.py: Policy), beside its keys' digests


def publish(
    connection,
    application_id,
    active: dict[str, tuple],
    *,
    application_key: bytes,
    route_key: bytes,
    quotas: dict | None = None,
) -> None:
    """Replace the application's published keys with ``active`` ({digest: (key id, label[, expires at])})
    and its limits with ``quotas`` (runtime/quotas.py: Policy), atomically, each entry signed
    (``entry_key`` of ``application_key``), with the gateway's index of which application each key
    reaches (signed with ``route_key``, llmapp/gateway/table.py)."""
    from ..gateway.table import key_route

    signing = entry_key(application_key)

    def value(key_digest, key_id, label, expires_at=None) -> str:
        text = f"{key_id}@{expires_at:.0f}:{label}" if expires_at else f"{key_id}:{label}"
        return f"{_signature(signing, key_digest, text)}.{text}"

    application_id = str(application_id)
    parts = [
        part
        for digest_, fields in active.items()
        for part in (digest_, value(digest_, *fields), key_route(route_key, digest_, application_id))
    ]
    quotas_text = json.dumps(quotas, sort_keys=True) if quotas else ""
    signed_quotas = f"{_signature(signing, QUOTAS_FIELD, quotas_text)}.{quotas_text}" if quotas_text else ""
    connection.eval(
        _PUBLISH, 2, keyspace.api_keys(application_id), keyspace.key_routes(), application_id, signed_quotas, *parts
    )


def _info(value: str) -> KeyInfo:
    key_id, _, label = value.partition(":")
    key_id, _, expires_at = key_id.partition("@")
    return KeyInfo(key_id, label, float(expires_at) if expires_at else None)


class KeyStoreUnavailable(Exception):
    """Redis is unreachable and this key has not been seen before."""


class KeyChecker:
    """Checks keys against Redis on every request, so a new or revoked key applies at once."""

    RETRY_S = 1.0  # after a Redis error, answer from the known keys this long before asking again

    def __init__(self, connection, application_id, application_key: bytes, quotas=None):
        if not application_key:  # a key anyone could derive would let anyone's entries in
            raise ValueError("no application key: the server can't tell the platform's key entries from others'")
        self.connection, self.application_id = connection, application_id
        self.entry_key = entry_key(application_key)
        self.known: dict[str, KeyInfo] = {}  # digest → key, of keys Redis said were valid
        self.used: dict[str, float] = {}  # key id → last use, written to Redis by flush_used()
        self.unreachable_until = 0.0
        self.quotas = quotas  # a quotas.Quotas, given the limits published with the keys
        self.forged_policy_seen = False

    def _policy(self, entry: bytes | None) -> None:
        """The limits published with the keys. One that is missing or not the platform's changes nothing:
        the last verified one stays (an entry anyone else wrote, or deleted, never lifts a limit)."""
        if self.quotas is None:
            return
        verified = _verified(self.entry_key, QUOTAS_FIELD, entry) if entry is not None else None
        if verified is not None:
            self.quotas.update(verified)
        elif entry is not None and not self.forged_policy_seen:
            log.warning("the limits entry in Redis is not the platform's: the last verified limits stay")
            self.forged_policy_seen = True

    async def load(self) -> None:
        """Know every active key up front (best effort), so an outage right after start still serves them."""
        try:
            published = await self.connection.hgetall(keyspace.api_keys(self.application_id))
        except redis.RedisError:
            return
        self._policy(published.pop(QUOTAS_FIELD.encode(), None))
        verified = {d.decode(): _verified(self.entry_key, d.decode(), v) for d, v in published.items()}
        self.known = {d: _info(v) for d, v in verified.items() if v is not None}

    async def check(self, key: str) -> KeyInfo | None:
        """The key, when it is valid; None when it is not.

        :raise KeyStoreUnavailable: Redis can't be asked and the key was never seen.
        """
        key_digest = digest(key)
        if time.monotonic() >= self.unreachable_until:
            try:
                value, policy = await self.connection.hmget(
                    keyspace.api_keys(self.application_id), [key_digest, QUOTAS_FIELD]
                )
            except redis.RedisError as e:
                if not self.unreachable_until:
                    log.warning("Redis is unreachable (%s): serving the API keys already known", e)
                self.unreachable_until = time.monotonic() + self.RETRY_S
            else:
                if self.unreachable_until:
                    log.warning("Redis is reachable again")
                    self.unreachable_until = 0.0
                verified = _verified(self.entry_key, key_digest, value) if value is not None else None
                if verified is None:  # none, or one the platform did not sign
                    self.known.pop(key_digest, None)
                    return None
                self._policy(policy)
                info = self.known[key_digest] = _info(verified)
                if info.expired():
                    return None
                self.used[info.id] = time.time()
                return info
        info = self.known.get(key_digest)
        if info is None:
            raise KeyStoreUnavailable()
        if info.expired():
            return None
        self.used[info.id] = time.time()
        return info

    async def flush_used(self) -> None:
        """Record when each key was last used (the reconcile copies it to the database)."""
        if not self.used:
            return
        used, self.used = self.used, {}
        try:
            await self.connection.hset(
                keyspace.api_keys_used(self.application_id), mapping={k: f"{v:.0f}" for k, v in used.items()}
            )
        except redis.RedisError:
            self.used = {**used, **self.used}  # next time
