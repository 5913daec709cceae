from flask import abort, flash, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from ..services import FieldErrors, Invalid, NotFound, ServiceError, access_tokens, quotas, users
from ..web import admin_required, bounded_int, redirect_to, render, wants_fragment
from . import bp
from .forms import ChangePasswordForm, LanguageForm, NewTokenForm, NewUserForm


@bp.before_request
@login_required
def require_login():
    """Every page here needs a login; all but the user's own account (and its tokens) need an admin
    (admin_required, and the users service)."""


def get_user(user_id: int):
    """:raise Forbidden: the current user is not an admin. :raise 404: no such user."""
    try:
        return users.get_user(user_id, acting=current_user)
    except NotFound:
        abort(404, _("No such user."))


def _page(form, code=200):
    rows = users.list_users(acting=current_user)
    return render("users/index.html", "users/_new.html", code=code, users=rows, form=form)


@bp.route("/", methods=["GET", "POST"])
@admin_required(users.ADMIN_ONLY)
def index():
    """The users, and a form to add one (admins only)."""
    form = NewUserForm()
    if form.validate_on_submit():
        try:
            user = users.create_user(form.email.data, form.password.data, admin=form.admin.data, acting=current_user)
        except Invalid as e:
            form[e.field or "email"].errors.append(str(e))
        else:
            flash(
                _(
                    "User %(email)s created. Give them their password; they can change it under Account.",
                    email=user.email,
                ),
                "success",
            )
            return redirect_to(url_for(".index"))
    return _page(form, 422 if form.errors else 200)


def _row(user, message=None, error=None, password=None):
    return render_template(
        "users/_row.html",
        user=user,
        last_login=users.last_login_at(user),
        message=message,
        error=error,
        new_password=password,
    )


def _change(user_id, change, done: str):
    """Apply ``change`` to a user and answer with their row (saying what happened, or why not)."""
    user = get_user(user_id)
    try:
        result = change(user)
    except FieldErrors as e:
        return _row(user, error=" ".join(m for messages in e.errors.values() for m in messages))
    except ServiceError as e:
        return _row(user, error=str(e))
    return _row(user, message=done, password=result if isinstance(result, str) else None)


@bp.post("/<id:user_id>/admin")
@admin_required(users.ADMIN_ONLY)
def make_admin(user_id):
    """Make a user an admin, or (admin=0) an ordinary member."""
    admin = request.form.get("admin") == "1"
    done = _("Now an admin.") if admin else _("Now a member.")
    return _change(user_id, lambda u: users.set_admin(u, admin, acting=current_user), done)


@bp.post("/<id:user_id>/disable")
@admin_required(users.ADMIN_ONLY)
def disable(user_id):
    """Disable an account: its logins end at once."""
    done = _("Disabled: their logins have ended.")
    return _change(user_id, lambda u: users.disable(u, acting=current_user), done)


@bp.post("/<id:user_id>/enable")
@admin_required(users.ADMIN_ONLY)
def enable(user_id):
    return _change(user_id, lambda u: users.enable(u, acting=current_user), _("Enabled: they can log in again."))


@bp.post("/<id:user_id>/limits")
@admin_required(users.ADMIN_ONLY)
def limits(user_id):
    """A person's limits, across all their applications: their servers obey them from the next request."""
    values = {kind: request.form.get(kind, "").strip() for kind in quotas.FIELDS if kind in request.form}
    return _change(user_id, lambda u: quotas.set_user_limits(u, values, acting=current_user), _("Limits saved."))


@bp.post("/<id:user_id>/reset-password")
@admin_required(users.ADMIN_ONLY)
def reset_password(user_id):
    """A new password, shown once to the admin to hand over; the user's logins end."""
    done = _("Password reset: their logins have ended.")
    return _change(user_id, lambda u: users.reset_password(u, acting=current_user), done)


@bp.route("/account", methods=["GET", "POST"])
def account():
    """The signed-in user's own account: change the password (their other logins end), choose the pages'
    language (its form posts to auth.language)."""
    form = ChangePasswordForm()
    if form.validate_on_submit():
        try:
            users.change_password(current_user, form.current.data, form.new.data)
        except Invalid as e:
            form[e.field or "new"].errors.append(str(e))
        else:
            flash(_("Password changed. Your other logins have ended."), "success")
            return redirect_to(url_for(".account"))
    language_form = LanguageForm(
        formdata=None, data={"language": current_user.locale or "", "next": url_for(".account")}
    )
    context = {"form": form, "language_form": language_form, **_tokens_context()}
    return render_template("users/account.html", **context), 422 if form.errors else 200


def _tokens_context(form=None, new_token=None) -> dict:
    return {
        "tokens": access_tokens.list_for(current_user),
        "token_form": form or NewTokenForm(formdata=None),
        "new_token": new_token,
        "token_state": access_tokens.state,
    }


def _tokens_section(form=None, new_token=None, code=200):
    if not wants_fragment():
        return redirect_to(url_for(".account") + "#tokens")
    return render_template("users/_tokens.html", **_tokens_context(form, new_token)), code


@bp.post("/account/tokens")
def create_token():
    """A personal access token for the REST API, shown once in the tokens section."""
    form = NewTokenForm()
    if not form.validate_on_submit():
        return _tokens_section(form, code=422)
    try:
        _token, plain = access_tokens.create(current_user, form.name.data, bounded_int(form.expires_days.data))
    except Invalid as e:
        form[e.field or "name"].errors.append(str(e))
        return _tokens_section(form, code=422)
    return _tokens_section(new_token=plain)


@bp.post("/account/tokens/<id:token_id>/revoke")
def revoke_token(token_id):
    try:
        access_tokens.revoke(current_user, token_id)
    except NotFound:
        abort(404, _("No such token."))
    return _tokens_section()
