"""/api/v1/users: managing users, for admins (the users service refuses a member: 403)."""

from flask import g
from spectree import Response

from ..services import users
from . import ADMIN_BODY_ERRORS, ADMIN_ERRORS, bp, spec
from .schemas import NewPassword, Problem, UserChange, UserIn, UserList, UserOut

USERS = ["users"]


def _user_out(user, last_login=None) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        admin=user.is_admin,
        disabled=user.disabled_at is not None,
        created_at=user.created_at,
        last_login_at=last_login,
    )


@bp.get("/users")
@spec.validate(resp=Response(HTTP_200=UserList, **ADMIN_ERRORS), tags=USERS)
def list_users():
    """Every user, with role, status and latest login (admins)."""
    return UserList(items=[_user_out(user, at) for user, at in users.list_users(acting=g.api_user)])


@bp.post("/users")
@spec.validate(json=UserIn, resp=Response(HTTP_201=UserOut, HTTP_409=Problem, **ADMIN_BODY_ERRORS), tags=USERS)
def create_user(json: UserIn):
    """Add a user (admins); the password rules are the page's."""
    return _user_out(users.create_user(json.email, json.password, admin=json.admin, acting=g.api_user)), 201


@bp.put("/users/<int:user_id>")
@spec.validate(json=UserChange, resp=Response(HTTP_200=UserOut, HTTP_409=Problem, **ADMIN_BODY_ERRORS), tags=USERS)
def change_user(user_id, json: UserChange):
    """Make or unmake an admin, disable or enable an account (admins; never the last admin, nor yourself)."""
    user = users.get_user(user_id, acting=g.api_user)
    if json.admin is not None:
        users.set_admin(user, json.admin, acting=g.api_user)
    if json.disabled is True:
        users.disable(user, acting=g.api_user)
    elif json.disabled is False:
        users.enable(user, acting=g.api_user)
    return _user_out(user, users.last_login_at(user))


@bp.post("/users/<int:user_id>/reset-password")
@spec.validate(resp=Response(HTTP_200=NewPassword, **ADMIN_ERRORS), tags=USERS)
def reset_user_password(user_id):
    """A new password for the user, in this answer only; their logins end (admins)."""
    user = users.get_user(user_id, acting=g.api_user)
    return NewPassword(password=users.reset_password(user, acting=g.api_user))
