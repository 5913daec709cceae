"""`flask engines`: the managed engines on this host (services/engine_installs.py)."""

import json

import click

from ..services import OPERATOR, engine_installs
from . import engines_cli


@engines_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_engines(as_json):
    """Every engine: installed here or not, its version, the applications that use it."""
    listed = engine_installs.overview(OPERATOR)
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for engine in listed:
        state = (engine["version"] or "") if engine["installed"] else f"not installed: {engine['install_command']}"
        used = ", ".join(engine["applications"]) or "no applications"
        click.echo(f"{engine['name']:<20} {state:<48} {used}")


@engines_cli.command("install")
@click.argument("name")
def install_engine(name):
    """Install a managed engine in a virtualenv of its own on this host (minutes for vLLM)."""
    marker = engine_installs.install(name, OPERATOR, echo=click.echo)
    click.echo(f"{marker['name']} {marker['version']} ready: deploy applications on it.")
