"""Encryption at rest for secret environment variables (Fernet, from the `cryptography` package)."""

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

MASK = "••••"


def _derive(material: bytes, info: bytes) -> bytes:
    """A Fernet key derived from ``material`` for one purpose (``info``)."""
    return base64.urlsafe_b64encode(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material))


def _fernet() -> Fernet:
    """LLMAPP_SECRETS_KEY (a Fernet key) when set; else a key derived from SECRET_KEY."""
    key = current_app.config.get("SECRETS_KEY")
    if not key:
        key = _derive(current_app.config["SECRET_KEY"].encode(), b"llmapp env secrets")
    return Fernet(key)


def application_key(application_id) -> bytes:
    """A Fernet key of one application's own, for what the platform hands its server through Redis
    (its plugin chain): the server gets it in its environment, and no other application's server can
    read what this one is given."""
    material = current_app.config.get("SECRETS_KEY") or current_app.config["SECRET_KEY"]
    return _derive(
        material.encode() if isinstance(material, str) else material, f"llmapp app {application_id}".encode()
    )


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Only for the serving process's environment; never for a page or a log.

    :raise ValueError: the key changed since the value was stored.
    """
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as e:
        raise ValueError("a secret could not be decrypted: SECRET_KEY or LLMAPP_SECRETS_KEY changed") from e


def fingerprint(plaintext: str) -> str:
    """A keyed digest of a secret: equal for equal values, and telling nothing of the value to whoever
    has no key (what releases keep to say whether a secret changed)."""
    material = current_app.config.get("SECRETS_KEY") or current_app.config["SECRET_KEY"]
    key = _derive(material.encode() if isinstance(material, str) else material, b"llmapp secret fingerprints")
    return hmac.new(key, plaintext.encode(), hashlib.sha256).hexdigest()[:24]
