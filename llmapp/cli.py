"""The `flask` commands: thin wrappers over the services."""

import sys

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from .services import ServiceError, bootstrap, demo, users

users_cli = AppGroup("users", help="Manage users.")
demo_cli = AppGroup("demo", help="Demo data.")


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
    try:
        user = users.create_user(email, password, admin=admin)
    except ServiceError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"Created {'admin' if user.is_admin else 'member'} {user.email}.")


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


def register(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(demo_cli)
    app.cli.add_command(setup)
