"""The `flask` commands: thin wrappers over the services (llmapp/cli/people.py: users, tokens, demo
data, setup; llmapp/cli/apps.py: applications, their keys, releases, metrics and logs;
llmapp/cli/quotas.py: keys, limits and usage; llmapp/cli/engines.py: managed engines).

They act as the operator (services.OPERATOR: whoever may run them runs the platform), so admin-only
rules let them through. A service's refusal (a ServiceError, Forbidden included) ends a command with
its message and exit status 1: ServiceCommands says so once, for every command.
"""

import click
from flask import Flask
from flask.cli import AppGroup

from ..services import ServiceError


class ServiceCommands(AppGroup):
    """A group of commands over the services: a refusal of theirs (a ServiceError) that a command does
    not handle itself ends it with the message and exit status 1, never a traceback."""

    def invoke(self, ctx):
        from ..services import audit

        try:
            with audit.operator_acting():  # what a command changes is the operator's, in the audit log
                return super().invoke(ctx)
        except ServiceError as e:
            raise click.ClickException(str(e)) from e


users_cli = ServiceCommands("users", help="Manage users.")
metrics_cli = ServiceCommands("metrics", help="Prometheus: the token its scrape job sends.")
demo_cli = ServiceCommands("demo", help="Demo data.")
apps_cli = ServiceCommands("apps", help="Deploy, stop and inspect applications (as an operator: all of them).")
keys_cli = ServiceCommands("keys", help="API keys of an application's endpoint.")
tokens_cli = ServiceCommands("tokens", help="Personal access tokens for the REST API (/api/v1).")
audit_cli = ServiceCommands("audit", help="The audit log: who changed what.")
hosts_cli = ServiceCommands("hosts", help="The hosts whose workers run app servers.")
engines_cli = ServiceCommands("engines", help="Managed engines (llama.cpp, vLLM, transformers serve) on this host.")
apps_cli.add_command(keys_cli)


def register(app: Flask) -> None:
    from . import apps, engines, quotas  # noqa: F401 - their commands join the groups above
    from .people import setup

    app.cli.add_command(metrics_cli)
    app.cli.add_command(apps_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(demo_cli)
    app.cli.add_command(engines_cli)
    app.cli.add_command(audit_cli)
    app.cli.add_command(hosts_cli)
    app.cli.add_command(setup)
