from flask import abort, flash, render_template, request, url_for
from flask_login import current_user, login_required

from ..services import Invalid, NotFound, ServiceError, access_tokens, users
from ..web import admin_required, bounded_int, redirect_to, render, wants_fragment
from . import bp
from .forms import ChangePasswordForm, NewTokenForm, NewUserForm


@bp.before_request
@login_required
def require_login():
    """Every page here needs a login; all but the user's own account (and its tokens) need an admin."""
    if request.endpoint not in ("users.account", "users.create_token", "users.revoke_token"):
        admin_required("Only an admin can manage users.")


def get_user(user_id: int):
    try:
        return users.get_user(user_id)
    except NotFound:
        abort(404, "No such user.")


def _page(form, code=200):
    return render("users/index.html", "users/_new.html", code=code, users=users.list_users(), form=form)


@bp.route("/", methods=["GET", "POST"])
def index():
    """The users, and a form to add one (admins only)."""
    form = NewUserForm()
    if form.validate_on_submit():
        try:
            user = users.create_user(form.email.data, form.password.data, admin=form.admin.data)
        except Invalid as e:
            form[e.field or "email"].errors.append(str(e))
        else:
            flash(f"User {user.email} created. Give them their password; they can change it under Account.", "success")
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
    except ServiceError as e:
        return _row(user, error=str(e))
    return _row(user, message=done, password=result if isinstance(result, str) else None)


@bp.post("/<id:user_id>/admin")
def make_admin(user_id):
    """Make a user an admin, or (admin=0) an ordinary member."""
    admin = request.form.get("admin") == "1"
    return _change(user_id, lambda u: users.set_admin(u, admin), "Now an admin." if admin else "Now a member.")


@bp.post("/<id:user_id>/disable")
def disable(user_id):
    """Disable an account: its logins end at once."""
    return _change(user_id, lambda u: users.disable(u, current_user), "Disabled: their logins have ended.")


@bp.post("/<id:user_id>/enable")
def enable(user_id):
    return _change(user_id, users.enable, "Enabled: they can log in again.")


@bp.post("/<id:user_id>/reset-password")
def reset_password(user_id):
    """A new password, shown once to the admin to hand over; the user's logins end."""
    return _change(user_id, users.reset_password, "Password reset: their logins have ended.")


@bp.route("/account", methods=["GET", "POST"])
def account():
    """The signed-in user's own account: change the password (their other logins end)."""
    form = ChangePasswordForm()
    if form.validate_on_submit():
        try:
            users.change_password(current_user, form.current.data, form.new.data)
        except Invalid as e:
            form[e.field or "new"].errors.append(str(e))
        else:
            flash("Password changed. Your other logins have ended.", "success")
            return redirect_to(url_for(".account"))
    return render_template("users/account.html", form=form, **_tokens_context()), 422 if form.errors else 200


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
        _, plain = access_tokens.create(current_user, form.name.data, bounded_int(form.expires_days.data))
    except Invalid as e:
        form[e.field or "name"].errors.append(str(e))
        return _tokens_section(form, code=422)
    return _tokens_section(new_token=plain)


@bp.post("/account/tokens/<id:token_id>/revoke")
def revoke_token(token_id):
    try:
        access_tokens.revoke(current_user, token_id)
    except NotFound:
        abort(404, "No such token.")
    return _tokens_section()
