"""Encryption at rest for secret environment variables (Fernet, from the `cryptography` package)."""

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

MASK = "••••"


def _fernet() -> Fernet:
    """LLMAPP_SECRETS_KEY (a Fernet key) when set; else a key derived from SECRET_KEY."""
    key = current_app.config.get("SECRETS_KEY")
    if not key:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"llmapp env secrets").derive(
            current_app.config["SECRET_KEY"].encode()
        )
        key = base64.urlsafe_b64encode(derived)
    return Fernet(key)


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
