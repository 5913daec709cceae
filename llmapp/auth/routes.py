from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user

from .. import i18n
from ..extensions import limiter
from ..services import Invalid, users
from . import bp
from .forms import LoginForm


def _safe_next(target: str | None) -> str:
    """Only a path on this site, never another host (open redirect)."""
    if target and not urlsplit(target).netloc and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("applications.index")


def _account() -> str:
    """The account a login attempt is for (the per-account limit's key)."""
    return "login-account:" + (request.form.get("email") or "").strip().lower()[:254]


@bp.route("/login", methods=["GET", "POST"])
# Per client address (the proxy's, unless LLMAPP_TRUSTED_PROXIES says how many to look through), and the
# failed attempts per account: many addresses can't take turns at one password, nor one proxy's users
# lock each other out, and the account's own successful logins never count against it.
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"])
@limiter.limit(
    lambda: current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"],
    methods=["POST"],
    key_func=_account,
    deduct_when=lambda response: response.status_code != 302,
)
def login():
    """Log a user in by email and password."""
    if current_user.is_authenticated:
        return redirect(url_for("applications.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = users.authenticate(form.email.data, form.password.data)
        if user is not None:
            if not user.is_active:
                form.email.errors.append(_("This account is disabled. Ask an admin to enable it."))
                return render_template("auth/login.html", form=form), 403
            users.start_session(user)
            login_user(user, remember=form.remember.data)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors.append(_("Wrong email or password."))
    return render_template("auth/login.html", form=form), 422 if form.errors else 200


@bp.post("/logout")
@login_required
def logout():
    """Log the current user out: this login ends on the server too (its cookies let nobody in again)."""
    users.end_session(current_user)
    logout_user()
    flash(_("You are logged out."), "info")
    return redirect(url_for("auth.login"), code=303)


@bp.get("/")
def home():
    """The App Center opens on its Applications tab."""
    return redirect(url_for("applications.index"))


@bp.post("/language")
def language():
    """The pages' language, for everyone (the login page's switch, the Account page's form): ``language``
    "en", "zh", or "" (follow the browser), kept in a cookie and, for a signed-in user, on their account;
    then back to ``next`` (a path on this site). Nothing is flashed: the page itself changes language."""
    code = request.form.get("language", "").strip()
    response = redirect(_safe_next(request.form.get("next")), code=303)
    try:
        if current_user.is_authenticated:
            users.set_language(current_user, code)
        else:
            users.check_language(code)
    except Invalid as e:
        flash(str(e), "error")
        return response
    if code:
        response.set_cookie(
            i18n.COOKIE,
            code,
            max_age=i18n.COOKIE_MAX_AGE,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
    else:
        response.delete_cookie(i18n.COOKIE, httponly=True, samesite="Lax", secure=request.is_secure)
    return response
