"""`flask apps keys`, `flask apps limits`, `flask users limits`, `flask apps usage`, `flask audit list`: API
keys with their limits, an application's and a person's limits, usage, and the audit log."""

import json

import click

from ..services import OPERATOR, api_keys, applications, audit, quotas, routing, usage
from . import apps_cli, audit_cli, keys_cli, users_cli
from .apps import _as_user, _field_errors
from .people import _user


def limit_options(command):
    """--rpm, --tpm, --daily-tokens, --monthly-tokens (0 removes a limit)."""
    for option, kind in reversed(
        (("--rpm", "rpm"), ("--tpm", "tpm"), ("--daily-tokens", "day"), ("--monthly-tokens", "month"))
    ):
        command = click.option(option, kind, default=None, help=f"{quotas.LABELS[kind]} (0: no limit).")(command)
    return command


def _given(**values) -> dict:
    return {kind: value for kind, value in values.items() if value is not None}


def _limits_json(target) -> dict:
    return {kind: target.limits.get(kind) for kind in quotas.FIELDS}


@keys_cli.command("create")
@click.argument("name")
@click.option("--label", default="", help="A name for the key, e.g. the script that uses it.")
@limit_options
@click.option("--json", "as_json", is_flag=True)
def create_key(name, label, as_json, **limits):
    """Create an API key for NAME, with limits if given, and print it once."""
    application = applications.find(name)
    with _field_errors():
        key, plain = api_keys.create_key(application, label, _given(**limits))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": key.id,
                    "key": plain,
                    "label": key.label,
                    "limits": _limits_json(key),
                    "gateway": routing.gateway_url(),
                    "endpoint": application.endpoint,
                    "application": application.name,
                }
            )
        )
    else:
        click.echo(f"{plain}\n(shown once) gateway: {routing.gateway_url()} (model “{application.name}”)")
        click.echo(f"limits: {quotas.describe(key.limits)}")


@keys_cli.command("limits")
@click.argument("name")
@click.argument("key_id", type=int)
@limit_options
def key_limits(name, key_id, **limits):
    """Set the limits of NAME's key KEY_ID (those not given stay as they are)."""
    with _field_errors():
        key = quotas.set_key_limits(applications.find(name), key_id, _given(**limits))
    click.echo(f"key {key.label or key.id}: {quotas.describe(key.limits)}")


@apps_cli.command("limits")
@click.argument("name")
@limit_options
def app_limits(name, **limits):
    """Set the limits of the application NAME, across all its keys (those not given stay)."""
    with _field_errors():
        application = quotas.set_application_limits(applications.find(name), _given(**limits))
    click.echo(f"{application.name}: {quotas.describe(application.limits)}")


@users_cli.command("limits")
@click.argument("email")
@limit_options
def user_limits(email, **limits):
    """Set the limits of the person EMAIL, across all their applications (those not given stay)."""
    with _field_errors():
        user = quotas.set_user_limits(_user(email), _given(**limits), acting=OPERATOR)
    click.echo(f"{user.email}: {quotas.describe(user.limits)}")


@apps_cli.command("usage")
@click.argument("name")
@click.option("--days", default=usage.DEFAULT_DAYS, show_default=True, help="The last N days, today included.")
@click.option("--as", "as_user", metavar="EMAIL", help="Look the application up as this user sees it.")
@click.option("--json", "as_json", is_flag=True)
def app_usage(name, days, as_user, as_json):
    """Requests and tokens of the application NAME per day and key."""
    application = _as_user(applications.find(name), name, as_user)
    report = usage.for_application(application, days, wait=True)
    if as_json:
        click.echo(json.dumps({"application": application.name, **usage.as_dict(report)}))
        return
    totals = report.totals
    click.echo(
        f"{application.name} from {report.since} to {report.until}: {totals['requests']} requests, "
        f"{totals['input_tokens']} in, {totals['output_tokens']} out, {totals['cached_tokens']} cached"
    )
    for row in report.rows:
        click.echo(
            f"  {row.day} {row.key_label:22} {row.requests:>8} {row.input_tokens:>10} "
            f"{row.output_tokens:>10} {row.cached_tokens:>10}"
        )


@audit_cli.command("list")
@click.option("--actor", default="", help="Part of who acted: an e-mail, a token's name.")
@click.option("--object", "object_type", default="", help="application, key, plugin, model, user, token, engine…")
@click.option("--action", default="", help="An action, or its start (application. for all of them).")
@click.option("--days", type=click.IntRange(1, 3660), default=None, help="Only the last N days.")
@click.option("--limit", type=click.IntRange(1, audit.MAX_PAGE), default=audit.PAGE, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def audit_list(actor, object_type, action, days, limit, as_json):
    """The newest entries of the audit log (the operator sees all of them)."""
    filters = audit.Filters(actor=actor, object_type=object_type, action=action, days=days, limit=limit)
    found = [audit.as_dict(entry) for entry in audit.entries(OPERATOR, filters)]
    if as_json:
        click.echo(json.dumps(found))
        return
    for entry in found:
        changed = ", ".join(entry["changes"]) or "-"
        click.echo(f"{entry['at']} {entry['actor']} {entry['action']} {entry['object_name']} ({changed})")
