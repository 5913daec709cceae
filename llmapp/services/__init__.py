"""Business rules. Views, jobs and the CLI call these; they never hold rules of their own."""

import re
from collections.abc import Callable

import redis
from flask_babel import gettext as _

from ..extensions import db
from ..i18n import _l

REDIS_UNREACHABLE = _l(
    "Redis is unreachable, so the running servers could not learn of the change; nothing changed. Try again."
)


class ServiceError(Exception):
    """A rule refused what was asked; the message is meant for the user."""


class NotFound(ServiceError):
    """No such object, or one the user may not see (the two look the same): 404."""


class Forbidden(ServiceError):
    """The user sees it but may not do this (an admin's operation, an admin's published plugin): 403.
    What the user may not even see is NotFound instead."""


class Conflict(ServiceError):
    pass


class Invalid(ServiceError):
    """Input a rule refuses; ``field`` names the input it is about, for forms to show it there."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class FieldErrors(Invalid):
    """Input that breaks rules at one or more fields: ``errors`` maps each field to its messages.

    Field names are the service's own ("name", "max_concurrency", "env.0.name" for a row of a list);
    the page forms, the CLI and the API render them, each in its own way, never rewording them.
    """

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(_("Some fields are not valid."), next(iter(errors), None))
        self.errors = errors


class Operator:
    """Who acts when no user does: the CLI (run by whoever runs the platform) and the platform itself (the
    first admin, the demo data). Admin-only rules let it through; every other rule applies to it. A
    sentinel of its own, never None: a missing user is nobody, and nobody is refused."""

    is_admin = True
    id = None

    def __repr__(self) -> str:
        return "OPERATOR"


OPERATOR = Operator()


def require_admin(acting, message: str) -> None:
    """The rule of every admin-only operation; ``acting`` is a User, or OPERATOR.

    :raise Forbidden: ``message``, when ``acting`` is not an admin (or is nobody).
    """
    if acting is None or not acting.is_admin:
        raise Forbidden(str(message))


class Taken(FieldErrors):
    """Values another row already holds (a name): well-formed input that conflicts with what is stored.
    The pages show it at its field like any error; the API answers 409 Conflict, with the same errors.
    Its message is its first error's (a page that shows one message shows that one)."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(errors)
        self.args = (errors[self.field][0],)


def refuse(errors: dict[str, list[str]], taken: set[str] = frozenset()) -> None:
    """Raise the field errors found, if any: Taken when every one is a value another row holds.

    :raise FieldErrors, Taken:
    """
    if errors:
        raise (Taken if set(errors) <= set(taken) else FieldErrors)(dict(errors))


NUL_ERROR = _l("Contains a NUL character, which can't be stored or passed on.")
# The same rule for a reader of the API's document: a string of any length without a NUL (JSON Schema).
NO_NUL_PATTERN = "^[^\\u0000]*$"

# What the services strip from a name (str.strip(): Python's whitespace), written out for the API's
# document: \s and \S mean other characters in other regular expression engines (ECMA 262's \s has
# U+FEFF and not U+001C, Python's the reverse).
SPACE = "".join(c for c in map(chr, range(0x10000)) if c.isspace())
_SPACE_CLASS = "".join(f"\\u{ord(c):04x}" for c in SPACE)
NOT_BLANK_PATTERN = f"[^{_SPACE_CLASS}]"  # somewhere, a character str.strip() keeps: not blank
EDGE_SPACE_PATTERN = f"[{_SPACE_CLASS}]*"  # what str.strip() removes from either end


def any_case(text: str) -> str:
    """``text`` as a regular expression that matches it in any case, without the (?i) flag JSON Schema's
    regular expressions (ECMA 262) do not have: "md" → "[mM][dD]"."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


def listing(items) -> str:
    """Items (names, limits) as the request's language lists them: "a, b, c" in English, "a、b、c" in Chinese."""
    text = ""
    for item in items:
        text = _("%(items)s, %(item)s", items=text, item=item) if text else str(item)
    return text


def publish_before_commit(publish: Callable[[], None], failure: str) -> None:
    """Give the running servers what the session holds (flushed, not yet committed) with ``publish``,
    so that the database and the servers never disagree; the caller commits after it.

    :raise ServiceError: "``failure``: why", the session rolled back: Redis is unreachable, or
        ``publish`` refused with a ServiceError (whose message is the reason).
    """
    db.session.flush()
    try:
        publish()
    except (redis.RedisError, ServiceError) as e:
        db.session.rollback()
        reason = REDIS_UNREACHABLE if isinstance(e, redis.RedisError) else e
        raise ServiceError(_("%(failure)s: %(reason)s", failure=failure, reason=reason)) from e
