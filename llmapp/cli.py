"""The `flask` commands: thin wrappers over the services.

They act as the operator (services.OPERATOR: whoever may run them runs the platform), so admin-only
rules let them through. A service's refusal (a ServiceError, Forbidden included) ends a command with
its message and exit status 1: ServiceCommands says so once, for every command.
"""

import json
import sys
import time

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from .extensions import db
from .services import (
    OPERATOR,
    FieldErrors,
    ServiceError,
    access_tokens,
    api_keys,
    applications,
    bootstrap,
    demo,
    deployments,
    lifecycle,
    registry,
    routing,
    users,
)
from .services import logs as logs_service
from .services import metrics as metrics_service


class ServiceCommands(AppGroup):
    """A group of commands over the services: a refusal of theirs (a ServiceError) that a command does
    not handle itself ends it with the message and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ServiceError as e:
            raise click.ClickException(str(e)) from e


users_cli = ServiceCommands("users", help="Manage users.")
metrics_cli = ServiceCommands("metrics", help="Prometheus: the token its scrape job sends.")
demo_cli = ServiceCommands("demo", help="Demo data.")
apps_cli = ServiceCommands("apps", help="Deploy, stop and inspect applications (as an operator: all of them).")
keys_cli = ServiceCommands("keys", help="API keys of an application's endpoint.")
tokens_cli = ServiceCommands("tokens", help="Personal access tokens for the REST API (/api/v1).")
apps_cli.add_command(keys_cli)


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


def _assignments(pairs: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    found = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: write NAME=VALUE.", param_hint=option)
        found.append((name, value))
    return found


def _number_or_text(value: str):
    """A number when it reads as one; else the text (which the service then calls what it is)."""
    try:
        return int(value)
    except ValueError:
        return value


def _typed(field: str, value: str):
    """A configuration value as typed: the integer fields as numbers when they read as such."""
    return _number_or_text(value) if field in applications.BOUNDS else value


@apps_cli.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, metavar="EMAIL", help="The user who owns it.")
@click.option("--model", "model", required=True, help="A registry model's name or id.")
@click.option("--description", default="")
@click.option(
    "--set", "settings", multiple=True, metavar="FIELD=VALUE", help="A configuration field, e.g. timeout_s=120."
)
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable.")
@click.option("--secret", "secrets", multiple=True, metavar="NAME=VALUE", help="A secret environment variable.")
@click.option("--json", "as_json", is_flag=True)
def create_app(name, owner_email, model, description, settings, env, secrets, as_json):
    """Create an application NAME owned by EMAIL (the same rules as the page and the API: every broken
    one is printed as "field: message", and nothing is created)."""
    owner = _user(owner_email)
    by_name = {m.name: m.id for m in registry.list_models()}
    model_id = by_name.get(model) or _number_or_text(model)  # a name, an id, or text that names no model
    data = {"name": name, "model_id": model_id, "description": description}  # the rest: the model's recommendation
    unknown = []
    for field, value in _assignments(settings, "--set"):
        if field not in applications.DEFAULT_CONFIG:
            unknown.append(field)
        data[field] = _typed(field, value)
    if unknown:
        raise click.BadParameter(
            f"unknown field(s) {', '.join(unknown)}; the fields: {', '.join(applications.DEFAULT_CONFIG)}",
            param_hint="--set",
        )
    data["env"] = [{"name": k, "value": v, "secret": False} for k, v in _assignments(env, "--env")] + [
        {"name": k, "value": v, "secret": True} for k, v in _assignments(secrets, "--secret")
    ]
    try:
        application = applications.create(owner, data)
    except FieldErrors as e:
        for field, messages in e.errors.items():
            for message in messages:
                click.echo(f"{field}: {message}", err=True)
        raise SystemExit(1) from e
    _report(application, as_json)


def _wait(application, until: set[str], timeout: float):
    """Poll the database until the application reaches one of ``until``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.expire_all()
        current = db.session.get(type(application), application.id)
        if current.status in until:
            return current
        time.sleep(0.25)
    raise click.ClickException(f"Still {current.status} after {timeout:g} s.")


def _report(application, as_json: bool) -> None:
    data = applications.summary(application)
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(f"{data['name']}: {data['status']}" + (f" at {data['endpoint']}" if data["endpoint"] else ""))
    if application.status == lifecycle.FAILED:
        raise click.ClickException(application.last_error or "failed")


@apps_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_apps(as_json):
    """List every application with its status and endpoint."""
    rows = db.session.scalars(db.select(applications.Application).order_by(applications.Application.name)).all()
    if as_json:
        click.echo(json.dumps([applications.summary(a) for a in rows]))
        return
    for a in rows:
        click.echo(f"{a.name:30} {a.status:10} {a.endpoint or '-'}")


def _transition(name, request_transition, until: set[str], wait: bool, timeout: float, as_json: bool):
    application = applications.find(name)
    request_transition(application)
    if wait:
        application = _wait(application, until, timeout)
    _report(application, as_json)


@apps_cli.command("deploy")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait until it is running (exit 1 if it fails).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True)
def deploy_app(name, wait, timeout, as_json):
    """Deploy the application NAME (a name, or an id)."""
    _transition(name, deployments.request_deploy, {lifecycle.RUNNING, lifecycle.FAILED}, wait, timeout, as_json)


@apps_cli.command("stop")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait until it is stopped.")
@click.option("--timeout", default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def stop_app(name, wait, timeout, as_json):
    """Stop the application NAME: in-flight requests finish, then its server exits."""
    _transition(name, deployments.request_stop, {lifecycle.STOPPED, lifecycle.FAILED}, wait, timeout, as_json)


@keys_cli.command("create")
@click.argument("name")
@click.option("--label", default="", help="A name for the key, e.g. the script that uses it.")
@click.option("--json", "as_json", is_flag=True)
def create_key(name, label, as_json):
    """Create an API key for NAME and print it once."""
    application = applications.find(name)
    _, plain = api_keys.create_key(application, label)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "key": plain,
                    "gateway": routing.gateway_url(),
                    "endpoint": application.endpoint,
                    "application": application.name,
                }
            )
        )
    else:
        click.echo(f"{plain}\n(shown once) gateway: {routing.gateway_url()} (model “{application.name}”)")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _print_metrics(report: dict) -> None:
    if not report["available"]:
        raise click.ClickException("The metrics can't be read: Redis is unreachable.")
    click.echo(f"{report['application']} over {report['window']} (from {report['from']} to {report['to']})")
    if not report["has_data"]:
        click.echo("  no traffic and no resource samples in this window")
        return
    latency = report["latency_s"]
    lines = [
        ("requests", f"{report['requests']} ({report['requests_per_s']:.3g}/s)"),
        ("by outcome", " ".join(f"{k}={v}" for k, v in report["outcomes"].items() if v) or "-"),
        ("error rate", "-" if report["error_rate"] is None else f"{report['error_rate']:.1%}"),
        ("latency p50/p95/p99", " / ".join(_ms(latency[p]) for p in ("p50", "p95", "p99"))),
        ("time to first token p50", _ms(report["ttft_s"]["p50"])),
        (
            "tokens in/out",
            f"{report['tokens']['input']} / {report['tokens']['output']} ({report['output_tokens_per_s']:.3g} out/s)",
        ),
        ("cache hit rate", "-" if report["cache"]["hit_rate"] is None else f"{report['cache']['hit_rate']:.1%}"),
        ("in flight", "-" if report["in_flight"] is None else str(report["in_flight"])),
    ]
    for name, value in lines:
        click.echo(f"  {name:26} {value}")
    for key in report["keys"]:
        click.echo(f"  key {key['label']:22} {key['requests']} requests, {key['output_tokens']} tokens out")


@apps_cli.command("metrics")
@click.argument("name")
@click.option("--window", type=click.Choice(list(metrics_service.WINDOWS)), default=metrics_service.DEFAULT_WINDOW)
@click.option("--as", "as_user", metavar="EMAIL", help="Look the application up as this user sees it.")
@click.option("--json", "as_json", is_flag=True, help="The whole report, with chart points, for scripts.")
def app_metrics(name, window, as_user, as_json):
    """Request metrics of the application NAME over a window."""
    application = _as_user(applications.find(name), name, as_user)
    report = metrics_service.report(application, window)
    if as_json:
        click.echo(json.dumps(report))
    else:
        _print_metrics(report)


def _as_user(application, name: str, email: str | None):
    """The application as ``email`` sees it (another member's looks like no such application)."""
    if not email:
        return application
    user = users.find_by_email(email)
    if user is None:
        raise click.ClickException(f"No user {email}.")
    try:
        return applications.get_for_user(application.id, user)
    except ServiceError as e:
        raise click.ClickException(f"No application named “{name}”.") from e


@apps_cli.command("logs")
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C stops).")
@click.option("--level", help="Only this level and above: DEBUG, INFO, WARNING or ERROR.")
@click.option("--since", help="Only lines this recent: 30s, 10m, 2h, 7d.")
@click.option("--grep", "text", help="Only lines containing this text (case-insensitive; a request id works).")
@click.option("--as", "as_user", metavar="EMAIL", help="Look the application up as this user sees it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (NDJSON).")
def app_logs(name, follow, level, since, text, as_user, as_json):
    """Print the log of the application NAME (the retained lines, oldest first), like tail -f with --follow."""
    application = _as_user(applications.find(name), name, as_user)
    levels = logs_service.level_at_least(level)
    seconds = logs_service.parse_since(since)

    def show(line):
        if logs_service.matches(line, levels, (text or "").lower()):
            click.echo(json.dumps(line.as_dict()) if as_json else line.as_text())

    # The newest line before the history is read: following goes on from there (or from the last line
    # printed, if later), so a line written meanwhile is printed once, never lost.
    before_history = [line.id for line in logs_service.recent(application, 1)] if follow else []
    lines = logs_service.search(application, level, text, since=time.time() - seconds if seconds else None, limit=10**6)
    for line in lines.lines:
        show(line)
    if follow:
        printed = [lines.lines[-1].id] if lines.lines else []
        after = max(["0-0", *before_history, *printed], key=logs_service.sort_key)
        for line in logs_service.follow(application, after):
            if line is not None:
                show(line)


@metrics_cli.command("token")
def metrics_token():
    """Print the token Prometheus sends to /metrics and to the target list (see README, Prometheus)."""
    click.echo(metrics_service.metrics_token())


def register(app: Flask) -> None:
    app.cli.add_command(metrics_cli)
    app.cli.add_command(apps_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(demo_cli)
    app.cli.add_command(setup)
