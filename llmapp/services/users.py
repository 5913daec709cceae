"""Users: creation, and the first admin of a new installation."""

import re
import secrets

from sqlalchemy import func, select

from ..extensions import db
from ..models import User
from . import Conflict, ServiceError

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
MIN_PASSWORD = 8


def find_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


def create_user(email: str, password: str, *, admin: bool = False) -> User:
    """:raise ServiceError: the email is malformed, taken, or the password too short."""
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise ServiceError(f"“{email}” is not an email address.")
    if len(password) < MIN_PASSWORD:
        raise ServiceError(f"The password must have at least {MIN_PASSWORD} characters.")
    if find_by_email(email):
        raise Conflict(f"A user with the email {email} already exists.")
    user = User(email=email, is_admin=admin)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def ensure_first_admin(email: str | None, password: str | None) -> tuple[User, str | None] | None:
    """Create an admin when there are no users yet.

    Uses ``email`` and ``password`` when both are given (as container images set them); otherwise
    generates a password. Returns the user and the generated password (None if it was given),
    or None when users already exist.
    """
    if db.session.scalar(select(func.count()).select_from(User)):
        return None
    generated = None
    if not (email and password):
        email = email or "admin@llmapp.local"
        password = generated = secrets.token_urlsafe(12)
    return create_user(email, password, admin=True), generated
