"""Users: creation, and the first admin of a new installation."""

import hashlib
import re
import secrets

from sqlalchemy import delete, func, select

from ..extensions import db
from ..models import LoginSession, User
from ..web import bounded_int
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


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(user: User) -> None:
    """Begin a login of ``user`` (its token goes into the session and remember-me cookies)."""
    token = secrets.token_urlsafe(32)
    db.session.add(LoginSession(user_id=user.id, token_hash=_token_hash(token)))
    db.session.commit()
    user.session_token = token


def user_of_session(session_id: str) -> User | None:
    """The user of a live login, from the "id:token" Flask-Login stored; None once it has ended."""
    user_id, _, token = (session_id or "").partition(":")
    user_id = bounded_int(user_id)
    if user_id is None or not token:
        return None
    user = db.session.scalar(
        select(User)
        .join(LoginSession, LoginSession.user_id == User.id)
        .where(User.id == user_id, LoginSession.token_hash == _token_hash(token))
    )
    if user is not None:
        user.session_token = token
    return user


def end_session(user: User) -> None:
    """End this login on the server: its session and remember-me cookies let nobody in again."""
    if user.session_token:
        db.session.execute(
            delete(LoginSession).where(
                LoginSession.user_id == user.id, LoginSession.token_hash == _token_hash(user.session_token)
            )
        )
        db.session.commit()
