"""Users: creation, the first admin of a new installation, logins, and what admins change.

Rules: there is always at least one active admin (the last one can't be disabled or unmade), and an
admin can't disable their own account. Disabling a user ends every login of theirs at once (the
session and remember-me cookies stop working on their next request) and revokes the keys the
platform held for them (their playground keys); their applications keep running; an admin stops or
reassigns them. A password reset by an admin, or a change by the user, ends the user's other logins.

Managing users (listing, adding, changing them) is for admins: each such function takes the acting
user (``acting``; OPERATOR from the CLI and the platform itself) and refuses a member with Forbidden.
"""

import functools
import hashlib
import re
import secrets

import redis
from flask_babel import gettext as _
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..i18n import LANGUAGES, _l, format_number
from ..models import MAX_ID, ApiKey, LoginSession, User, utcnow
from ..web import bounded_int
from . import OPERATOR, Conflict, Invalid, NotFound, Operator, Taken, access_tokens, require_admin

# An address: no "@", space or control character in either part, written with explicit ranges so that the
# API's document states the same rule to any regular-expression engine; as typed, it may begin and end
# with spaces and line ends (EDGE), which are removed.
NOT_IN_ADDRESS = r"@\x00-\x20\x7f-\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
EMAIL = re.compile(rf"^[^{NOT_IN_ADDRESS}]+@[^{NOT_IN_ADDRESS}]+$")
EDGE = " \t\n\r\f\v"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # far above any passphrase; the hash reads it all
MAX_EMAIL = 254
REQUIRED = {
    "email": _l("Give the user's email."),
    "password": _l("Give a password (at least %(count)s characters).", count=MIN_PASSWORD),
}
ADMIN_ONLY = _l("Only an admin can manage users.")


def find_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


@functools.cache
def _unknown_user_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def authenticate(email: str, password: str) -> User | None:
    """The user these credentials belong to, or None. A password is verified against a hash even for an
    address nobody has, so how long a login takes doesn't tell an unknown address from a wrong password."""
    user = find_by_email(email)
    if user is None:
        check_password_hash(_unknown_user_hash(), password)
        return None
    return user if user.check_password(password) else None


def create_user(email: str | None, password: str | None, *, admin: bool = False, acting: "User | Operator") -> User:
    """:raise Forbidden: ``acting`` is not an admin. :raise Invalid: the email is missing or malformed,
    or the password missing, too short or too long. :raise Taken: another user has that email (also
    when a concurrent request took it)."""
    require_admin(acting, ADMIN_ONLY)
    for field, value in (("email", email), ("password", password)):
        if not value:
            raise Invalid(str(REQUIRED[field]), field)
    typed, email = email, email.strip(EDGE).lower()
    if not EMAIL.match(email) or max(len(typed), len(email)) > MAX_EMAIL:
        raise Invalid(_("“%(email)s” is not an email address.", email=email), "email")
    check_password_rules(password)
    taken = Taken({"email": [_("A user with the email %(email)s already exists.", email=email)]})
    if find_by_email(email):
        raise taken
    user = User(email=email, is_admin=admin)
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as e:
        db.session.rollback()
        raise taken from e
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
    return create_user(email, password, admin=True, acting=OPERATOR), generated


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
        .where(User.id == user_id, LoginSession.token_hash == _token_hash(token), User.disabled_at.is_(None))
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


# --- what admins and users change ---------------------------------------------------------------


def check_password_rules(password: str) -> None:
    """:raise Invalid: the password is too short (or too long to hash sensibly)."""
    if len(password) < MIN_PASSWORD:
        raise Invalid(_("The password must have at least %(count)s characters.", count=MIN_PASSWORD), "password")
    if len(password) > MAX_PASSWORD:
        raise Invalid(
            _("The password must have at most %(count)s characters.", count=format_number(MAX_PASSWORD)), "password"
        )


def list_users(*, acting: "User | Operator") -> list[tuple[User, object]]:
    """Every user with the start of their latest login (None if they have none open), by email.

    :raise Forbidden: ``acting`` is not an admin.
    """
    require_admin(acting, ADMIN_ONLY)
    last_login = (
        select(LoginSession.user_id, func.max(LoginSession.created_at).label("at"))
        .group_by(LoginSession.user_id)
        .subquery()
    )
    rows = db.session.execute(
        select(User, last_login.c.at).outerjoin(last_login, last_login.c.user_id == User.id).order_by(User.email)
    )
    return [(user, at) for user, at in rows]


def last_login_at(user: User):
    """When the user's latest open login began (None if none is open)."""
    return db.session.scalar(select(func.max(LoginSession.created_at)).where(LoginSession.user_id == user.id))


def get_user(user_id: int, *, acting: "User | Operator") -> User:
    """A user to manage.

    :raise Forbidden: ``acting`` is not an admin. :raise NotFound: no such user (an id out of the
        database's range names none).
    """
    require_admin(acting, ADMIN_ONLY)
    user = db.session.get(User, user_id) if 1 <= user_id <= MAX_ID else None
    if user is None:
        raise NotFound(_("No such user."))
    return user


def _other_active_admins(user: User) -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.is_admin.is_(True), User.disabled_at.is_(None), User.id != user.id)
    )


def set_admin(user: User, admin: bool, *, acting: "User | Operator") -> None:
    """:raise Forbidden: ``acting`` is not an admin. :raise Conflict: it would leave no active admin."""
    require_admin(acting, ADMIN_ONLY)
    if not admin and user.is_admin and not _other_active_admins(user):
        raise Conflict(_("%(email)s is the last admin: make another user an admin first.", email=user.email))
    user.is_admin = admin
    db.session.commit()


def _end_logins(user: User, keep_token: str | None = None) -> None:
    query = delete(LoginSession).where(LoginSession.user_id == user.id)
    if keep_token:
        query = query.where(LoginSession.token_hash != _token_hash(keep_token))
    db.session.execute(query)


def disable(user: User, *, acting: "User | Operator") -> None:
    """Disable an account: its logins end and its playground keys are revoked, at once.

    :raise Forbidden: ``acting`` is not an admin. :raise Conflict: it is the acting admin's own account,
        or the last active admin.
    """
    require_admin(acting, ADMIN_ONLY)
    if acting is not OPERATOR and user.id == acting.id:
        raise Conflict(_("You can't disable your own account."))
    if user.is_admin and not _other_active_admins(user):
        raise Conflict(_("%(email)s is the last admin: make another user an admin first.", email=user.email))
    if user.disabled_at is not None:
        return
    from . import api_keys, playground

    user.disabled_at = utcnow()
    _end_logins(user)
    access_tokens.revoke_all(user)  # scripts acting as them stop too
    revoked = db.session.scalars(
        select(ApiKey).where(
            ApiKey.purpose == "playground", ApiKey.label == playground.key_label(user), ApiKey.revoked_at.is_(None)
        )
    ).all()
    for key in revoked:
        key.revoked_at = utcnow()
    db.session.flush()
    for application in {key.application for key in revoked}:
        try:
            api_keys.publish_keys(application)
        except redis.RedisError:
            pass  # best effort: the key expires within the hour anyway, and the next deploy republishes
    db.session.commit()


def enable(user: User, *, acting: "User | Operator") -> None:
    """:raise Forbidden: ``acting`` is not an admin."""
    require_admin(acting, ADMIN_ONLY)
    user.disabled_at = None
    db.session.commit()


def reset_password(user: User, *, acting: "User | Operator") -> str:
    """A new password for ``user`` (returned once, to hand over); their logins end.

    :raise Forbidden: ``acting`` is not an admin.
    """
    require_admin(acting, ADMIN_ONLY)
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    _end_logins(user)
    db.session.commit()
    return password


def change_password(user: User, current: str, new: str) -> None:
    """The user's own change: their other logins end, this one stays.

    :raise Invalid: the current password is wrong, or the new one breaks the rules.
    """
    if not user.check_password(current):
        raise Invalid(_("That is not your current password."), "current")
    try:
        check_password_rules(new)
    except Invalid as e:
        raise Invalid(str(e), "new") from e
    user.set_password(new)
    _end_logins(user, keep_token=user.session_token)
    db.session.commit()


def check_language(code: str | None) -> None:
    """:raise Invalid: ``code`` is not a language the pages speak (None or "": follow the browser's)."""
    if code and code not in LANGUAGES:
        raise Invalid(_("Unknown language."), "language")


def set_language(user: User, code: str | None) -> None:
    """The language the user's pages speak: a code of llmapp.i18n.LANGUAGES, or None (or "") to follow the
    browser's.

    :raise Invalid: a language the platform doesn't speak.
    """
    check_language(code)
    user.locale = code or None
    db.session.commit()
