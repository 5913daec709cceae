"""`flask users`, `flask tokens`, `flask demo` and `flask setup`."""

import json
import sys

import click
from flask.cli import with_appcontext

from ..services import OPERATOR, access_tokens, bootstrap, demo, users
from . import demo_cli, tokens_cli, users_cli


@users_cli.command("create")
@click.argument("email")
@click.option("--admin", is_flag=True, help="Make the user an admin (sees and manages everything).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of prompting.")
def create_user(email, admin, password_stdin):
    """Create a user who logs in with EMAIL."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = users.create_user(email, password, admin=admin, acting=OPERATOR)
    click.echo(f"Created {'admin' if user.is_admin else 'member'} {user.email}.")


@users_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_users(as_json):
    """List every user: email, role, status and latest login."""
    rows = users.list_users(acting=OPERATOR)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "email": user.email,
                        "admin": user.is_admin,
                        "disabled": user.disabled_at is not None,
                        "created_at": user.created_at.isoformat(),
                        "last_login_at": last_login.isoformat() if last_login else None,
                    }
                    for user, last_login in rows
                ]
            )
        )
        return
    for user, last_login in rows:
        status = "disabled" if user.disabled_at else "active"
        role = "admin" if user.is_admin else "member"
        click.echo(f"{user.email:40} {role:7} {status:9} {last_login.isoformat(' ', 'minutes') if last_login else '-'}")


def _user(email: str):
    user = users.find_by_email(email)
    if user is None:
        raise click.ClickException(f"No user with the email {email}.")
    return user


@users_cli.command("disable")
@click.argument("email")
def disable_user(email):
    """Disable the account EMAIL: its logins end at once."""
    users.disable(_user(email), acting=OPERATOR)
    click.echo(f"Disabled {email}: their logins have ended.")


@users_cli.command("enable")
@click.argument("email")
def enable_user(email):
    """Enable the account EMAIL again."""
    users.enable(_user(email), acting=OPERATOR)
    click.echo(f"Enabled {email}.")


@tokens_cli.command("create")
@click.argument("email")
@click.option("--name", required=True, help="What uses it, e.g. the CI job.")
@click.option("--expires-days", type=int, default=None, help="Days until it expires (1-366); default: never.")
@click.option("--json", "as_json", is_flag=True)
def create_token(email, name, expires_days, as_json):
    """Create a token acting as EMAIL and print it once."""
    token, plain = access_tokens.create(_user(email), name, expires_days)
    expires = token.expires_at.isoformat() if token.expires_at else None
    if as_json:
        click.echo(json.dumps({"id": token.id, "token": plain, "name": token.name, "expires_at": expires}))
    else:
        click.echo(f"{plain}\n(shown once) id {token.id}, expires {expires or 'never'}")


@tokens_cli.command("list")
@click.argument("email")
def list_tokens(email):
    """EMAIL's tokens: id, name, state, created, expires, last used (never the tokens themselves)."""
    for token in access_tokens.list_for(_user(email)):
        click.echo(
            f"{token.id:>5}  {token.name:30} {access_tokens.state(token):8} {token.prefix}…  "
            f"created {token.created_at:%Y-%m-%d}  expires {token.expires_at or 'never'}  "
            f"last used {token.last_used_at or 'never'}"
        )


@tokens_cli.command("revoke")
@click.argument("email")
@click.argument("token_id", type=int)
def revoke_token(email, token_id):
    """Revoke EMAIL's token TOKEN_ID: requests with it get 401 from now on."""
    access_tokens.revoke(_user(email), token_id)
    click.echo(f"Token {token_id} revoked.")


@demo_cli.command("seed")
def seed_demo():
    """Create the demo admin, registry models and applications (what is missing of them)."""
    created = demo.seed()
    click.echo(f"Demo data: {created}. Log in as {demo.DEMO_EMAIL} / {demo.DEMO_PASSWORD}.")


@click.command("setup")
@with_appcontext
def setup():
    """Migrate the database, create the first admin if none, seed demo data if LLMAPP_DEMO=1."""
    for line in bootstrap.prepare():
        click.echo(line)
