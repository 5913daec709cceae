"""`flask apps`: applications, their keys, releases, metrics and logs."""

import contextlib
import json
import time

import click

from ..extensions import db
from ..services import (
    FieldErrors,
    ServiceError,
    applications,
    canaries,
    deployments,
    lifecycle,
    registry,
    releases,
    stops,
    users,
)
from ..services import logs as logs_service
from ..services import metrics as metrics_service
from . import apps_cli, metrics_cli
from .people import _user


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
    data.update(_settings(settings))
    data["env"] = _env(env, secrets)
    with _field_errors():
        application = applications.create(owner, data)
    _report(application, as_json)


def _settings(settings) -> dict:
    """``--set FIELD=VALUE`` options as the service's fields (an unknown field is a usage error)."""
    data, unknown = {}, []
    for field, value in _assignments(settings, "--set"):
        if field not in applications.DEFAULT_CONFIG:
            unknown.append(field)
        data[field] = _typed(field, value)
    if unknown:
        raise click.BadParameter(
            f"unknown field(s) {', '.join(unknown)}; the fields: {', '.join(applications.DEFAULT_CONFIG)}",
            param_hint="--set",
        )
    return data


def _env(env, secrets) -> list[dict]:
    return [{"name": k, "value": v, "secret": False} for k, v in _assignments(env, "--env")] + [
        {"name": k, "value": v, "secret": True} for k, v in _assignments(secrets, "--secret")
    ]


@contextlib.contextmanager
def _field_errors():
    """Every broken rule printed as "field: message", then exit 1 (nothing was saved)."""
    try:
        yield
    except FieldErrors as e:
        for field, messages in e.errors.items():
            for message in messages:
                click.echo(f"{field}: {message}", err=True)
        raise SystemExit(1) from e


@apps_cli.command("edit")
@click.argument("name")
@click.option(
    "--set", "settings", multiple=True, metavar="FIELD=VALUE", help="A configuration field, e.g. timeout_s=120."
)
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable (all of them).")
@click.option("--secret", "secrets", multiple=True, metavar="NAME=VALUE", help="A secret environment variable.")
@click.option("--note", default="", help="Why, in one line: kept with the release.")
@click.option("--json", "as_json", is_flag=True)
def edit_app(name, settings, env, secrets, note, as_json):
    """Change the application NAME (what is not given keeps its value; --env/--secret replace every
    variable): a changed setup is its next release, whose number is printed."""
    application = applications.find(name)
    data = {"name": application.name, "model_id": application.model_id, **_settings(settings), "note": note}
    if env or secrets:
        data["env"] = _env(env, secrets)
    with _field_errors():
        applications.update(application, data)
    release = releases.newest(application.id)
    if as_json:
        click.echo(json.dumps({**applications.summary(application), "release": release.number}))
    else:
        click.echo(f"{application.name}: release {release.number}")


@apps_cli.command("releases")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def list_releases(name, as_json):
    """The releases of the application NAME, newest first (current: the one its server runs)."""
    application = applications.find(name)
    serving = releases.serving(application)
    rows = [
        {
            "number": r.number,
            "current": r.number == serving,
            "created_at": r.created_at.isoformat(),
            "author": r.author.email if r.author else None,
            "note": r.note,
        }
        for r in releases.history(application)
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        mark = "*" if row["current"] else " "
        click.echo(f"{mark} {row['number']:>4}  {row['created_at'][:19]}  {row['author'] or '-':30} {row['note']}")


def _wait(application, until, timeout: float):
    """Poll the database until the application reaches one of ``until`` (statuses, or a test of it)."""
    done = until if callable(until) else lambda current: current.status in until
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.expire_all()
        current = db.session.get(type(application), application.id)
        if done(current):
            return current
        time.sleep(0.25)
    still = f"rolling out release {current.rolling_to}" if current.rolling_to else current.status
    raise click.ClickException(f"Still {still} after {timeout:g} s.")


def _report(application, as_json: bool) -> None:
    data = applications.summary(application)
    if as_json:
        click.echo(json.dumps(data))
    else:
        serving = f" release {data['release']}" if data["status"] == lifecycle.RUNNING else ""
        click.echo(
            f"{data['name']}: {data['status']}{serving}" + (f" at {data['endpoint']}" if data["endpoint"] else "")
        )
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
    """Deploy the newest release of the application NAME (a name, or an id); while it runs, roll it out
    beside the release serving, which serves until the new replicas are ready."""
    application = applications.find(name)
    deployments.request_deploy(application)
    _follow_deploy(application, wait, timeout, as_json)


@apps_cli.command("rollback")
@click.argument("name")
@click.option("--to", "number", type=int, help="The release to go back to (default: the one that served before)")
@click.option("--wait", is_flag=True, help="Wait until it serves (exit 1 if it fails).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True)
def rollback_app(name, number, wait, timeout, as_json):
    """Deploy an earlier release of the application NAME again, as its next release (rolling while it
    runs: no request is dropped)."""
    application = applications.find(name)
    deployments.rollback(application, number, None)
    _follow_deploy(application, wait, timeout, as_json)


@apps_cli.command("canary")
@click.argument("name")
@click.option("--share", type=int, help="Its share of the gateway's requests, in % (starts one, or changes it).")
@click.option("--promote", is_flag=True, help="Its release serves every request; the old one's servers stop.")
@click.option("--abort", is_flag=True, help="It gets no new request; its servers stop.")
@click.option("--wait", is_flag=True, help="Wait until it serves (exit 1 if it fails).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True)
def canary_app(name, share, promote, abort, wait, timeout, as_json):
    """Try the newest release of the application NAME as a canary taking --share % of the gateway's
    requests beside the release deployed (or change the running canary's share); then --promote or
    --abort it."""
    if sum((share is not None, promote, abort)) != 1:
        raise click.UsageError("Give one of --share, --promote or --abort.")
    application = applications.find(name)
    if promote or abort:
        (canaries.promote if promote else canaries.abort)(application)
    else:
        with _field_errors():
            started = canaries.start(application, share)
        if started:
            _follow_deploy(application, wait, timeout, as_json, canary=True)
            return
    db.session.expire_all()
    _report(db.session.get(type(application), application.id), as_json)


def _follow_deploy(application, wait: bool, timeout: float, as_json: bool, canary: bool = False) -> None:
    """After a deploy, a rollback or a canary was asked: wait (if asked) until it serves the release or
    failed."""
    db.session.expire_all()
    application = db.session.get(type(application), application.id)
    target = application.rolling_to or releases.newest(application.id).number
    if wait:
        application = _wait(
            application,
            lambda a: a.rolling_to is None and a.status in (lifecycle.RUNNING, lifecycle.FAILED, lifecycle.STOPPED),
            timeout,
        )
    _report(application, as_json)
    served = application.canary_release if canary else application.deployed_release
    if wait and (served != target or application.last_error):
        raise click.ClickException(f"Release {target} does not serve: {application.last_error or application.status}")


@apps_cli.command("stop")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait until it is stopped.")
@click.option("--timeout", default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def stop_app(name, wait, timeout, as_json):
    """Stop the application NAME: in-flight requests finish, then its server exits."""
    _transition(name, stops.request_stop, {lifecycle.STOPPED, lifecycle.FAILED}, wait, timeout, as_json)


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
