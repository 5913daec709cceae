"""The languages of the pages: English (the messages as the code writes them) and Simplified Chinese
(llmapp/translations/zh, compiled by the Makefile).

A page speaks the signed-in user's choice (Account page), else the choice of the browser's cookie
(the switch in the header of the login page), else the best of the browser's Accept-Language. The
REST API answers by Accept-Language alone (a script's language is the one it asks for); its `code`s
stay English. Outside a request (the CLI, jobs, the app servers, log lines) everything is English.
"""

from datetime import UTC, datetime

from babel import Locale
from babel.dates import format_skeleton
from babel.numbers import format_decimal
from flask import Flask, has_request_context, request
from flask_babel import Babel, get_locale, gettext, ngettext, pgettext, refresh
from flask_babel.speaklater import LazyString
from flask_login import current_user
from markupsafe import Markup, escape

DEFAULT = "en"
# The choices, each named in its own language (a reader who can't read the page still finds theirs).
LANGUAGES = {"en": "English", "zh": "简体中文"}
# <html lang>: what the page's text is written in (zh: Simplified Chinese, as in mainland China).
HTML_LANG = {"en": "en", "zh": "zh-CN"}
COOKIE = "llmapp_lang"
COOKIE_MAX_AGE = 365 * 24 * 3600

babel = Babel()


class LazyText(LazyString):
    """Flask-Babel's lazy string is taken by Jinja (and WTForms' labels) as ready HTML, unescaped: a
    message with a name in it would reach the page raw. This one is text, escaped like any other."""

    def __html__(self) -> Markup:
        return escape(str(self))


def _l(message: str, **variables) -> LazyText:
    """A message translated when it is read, not when it is written: form labels and rules defined
    once for every request, module-level messages shown in many."""
    return LazyText(gettext, message, **variables)


def browser_language() -> str:
    """The language the request's Accept-Language prefers among ours ("zh-CN", "zh-TW" → zh)."""
    return request.accept_languages.best_match(LANGUAGES, DEFAULT)


def chosen_language() -> str | None:
    """The language chosen in the product (the account's, else the cookie's), or None: follow the browser."""
    if current_user.is_authenticated and getattr(current_user, "locale", None) in LANGUAGES:
        return current_user.locale
    cookie = request.cookies.get(COOKIE)
    return cookie if cookie in LANGUAGES else None


def select_locale() -> str:
    if not has_request_context():
        return DEFAULT
    if request.path.startswith("/api/v1/"):  # a script's language is the one it asks for, never a cookie's
        return browser_language()
    return chosen_language() or browser_language()


def language() -> str:
    """The code of the language this request speaks ("en", "zh")."""
    locale = get_locale()
    return locale.language if locale is not None and locale.language in LANGUAGES else DEFAULT


def format_number(value, digits: int | None = None) -> str:
    """``value`` with the locale's grouping and decimal signs (``digits`` after the point, if given)."""
    if value is None:
        return "—"
    pattern = None if digits is None else "#,##0." + "0" * digits if digits else "#,##0"
    return format_decimal(value, format=pattern, locale=get_locale() or DEFAULT)


def format_when(value: datetime | None, seconds: bool = False) -> str:
    """A stored moment (naive UTC) as the locale writes a date and time, in UTC, said so."""
    if value is None:
        return "—"
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    locale = get_locale() or Locale.parse(DEFAULT)
    date = format_skeleton("yMMMd", moment, tzinfo=UTC, locale=locale)
    time = format_skeleton("Hms" if seconds else "Hm", moment, tzinfo=UTC, locale=locale)
    return str(locale.datetime_formats["medium"]).format(time, date) + " UTC"  # "Dec 6, 2026, 05:20 UTC"


def counted(number, singular: str, plural: str) -> str:
    """ "1 error", "2 errors", "2 个错误": a count with its noun, as the locale writes it. ``singular``
    and ``plural`` are messages with %(count)s (the number, grouped as the locale groups digits)."""
    return ngettext(singular, plural, number, count=format_number(number))


def N_(text: str) -> str:
    """Marks a message kept in English where it is stored or sent (a plugin type's title) for `make
    messages`; the page that shows it translates it with ``translate``."""
    return text


def NP_(context: str, text: str) -> str:
    """N_ for English that means something else elsewhere ("Created": a release's note, a date's label);
    the page translates it with ``translate(context)``."""
    return text


def translate(text: str, context: str | None = None) -> str:
    """A message marked with N_, in the request's language; any other text as it is."""
    if not text:
        return text
    return pgettext(context, text) if context else gettext(text)


def init_app(app: Flask) -> None:
    babel.init_app(app, locale_selector=select_locale, default_locale=DEFAULT, default_timezone="UTC")
    # Each request chooses again: under one application context (tests, a shell) Flask-Babel would keep
    # the first request's language for the next.
    app.before_request(refresh)
    app.jinja_env.globals.update(
        LANGUAGES=LANGUAGES,
        language=language,
        counted=counted,  # counted(n, "%(count)s error", "%(count)s errors"): extracted as a plural (Makefile)
        html_lang=lambda code=None: HTML_LANG[code or language()],  # <html lang>, or a choice's lang
    )
    app.jinja_env.filters.update(number=format_number, when=format_when, translate=translate)
