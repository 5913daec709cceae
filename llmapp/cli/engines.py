"""`flask engines`: the managed engines on this host (services/engine_installs.py); `flask hosts`: every
host (services/hosts.py)."""

import json

import click

from ..services import OPERATOR, engine_installs, hosts
from . import engines_cli, hosts_cli


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


@hosts_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_hosts(as_json):
    """Every host that announced itself: up or down, its resources, engines and replicas."""
    found = [host.as_dict() for host in hosts.list_hosts(OPERATOR)]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for host in found:
        state = "up" if host["up"] else f"down ({host['seconds_since']:.0f} s silent)"
        memory = f"{host['memory_available_bytes'] / 2**30:.1f}/{host['memory_bytes'] / 2**30:.1f} GiB"
        click.echo(f"{host['name']:<24} {host['address']:<16} {state:<20} {host['cpus']} CPUs {memory}")
        for replica in host["replicas"]:
            click.echo(f"    {replica['application']} release {replica['release']} {replica['status']}")
