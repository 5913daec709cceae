"""How an application's plugin chain travels from the platform to its server: a Redis hash of its
version and its body, the body encrypted (Fernet) with a key only the platform and that server hold.

The chain carries a webhook's signing secret and the retrieval documents, and Redis is shared by every
application, so the body is never there in the clear: the platform derives each application's chain
key from its own secret key and hands it to the server in its environment (CHAIN_KEY_VARIABLE), as it
hands over the application's secret variables. The server polls the version (a few bytes) and reads
the body only when it changed.
"""

import json

from cryptography.fernet import Fernet, InvalidToken

from ... import keyspace

CHAIN_KEY_VARIABLE = "LLMAPP_CHAIN_KEY"
EMPTY = {"version": "", "plugins": []}


def publish(connection, application_id, document: dict, key: bytes) -> None:
    body = Fernet(key).encrypt(json.dumps(document, ensure_ascii=False).encode())
    connection.hset(keyspace.plugin_chain(application_id), mapping={"version": document["version"], "body": body})


async def version(connection, application_id) -> str | None:
    """The published version; None when nothing is published (yet, or Redis lost it)."""
    value = await connection.hget(keyspace.plugin_chain(application_id), "version")
    return None if value is None else value.decode()


def decrypt(body: bytes | None, key: bytes) -> dict:
    """:raise ValueError: the body is not one this key opens."""
    if body is None:
        return EMPTY
    try:
        return json.loads(Fernet(key).decrypt(body))
    except (InvalidToken, ValueError) as e:
        raise ValueError("the published plugin chain could not be decrypted with this server's chain key") from e
