"""Managed engines' installs on this host: one virtualenv each under the engines folder, with pinned
versions, never the platform's own environment (vLLM pins its own transformers and torch).

``flask engines install NAME`` (llmapp/cli/engines.py) calls ``install``; the deploy's preflight asks
``installed``; the Engines page and ``flask engines list`` read ``overview``. An install is done when
its marker (``llmapp-engine.json``, written last) names the same requirements as the engine's kind:
a half-finished or older install counts as not installed. Installs of one engine on one host are
serialised by a file lock, and a new install is built beside the old one and swapped in at the end,
so servers running on the old one keep running.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select

from .. import engines
from ..extensions import db
from ..models import Application, RegistryModel
from ..queues import this_host
from . import Invalid, NotFound, require_admin

MARKER = "llmapp-engine.json"
PIP_TIMEOUT_S = 3600


def engines_dir() -> Path:
    """Where engines' virtualenvs live (LLMAPP_ENGINES_DIR; default: engines/ beside the instance folder).
    Not under the instance folder: that one is the platform's own (0700), and servers run as other accounts."""
    configured = current_app.config.get("ENGINES_DIR")
    return Path(configured) if configured else Path(current_app.instance_path).parent / "engines"


def venv_dir(name: str) -> Path:
    return engines_dir() / name


def python_of(name: str) -> Path:
    return venv_dir(name) / "bin" / "python"


def managed_kind(name: str) -> "engines.ManagedKind":
    """:raise NotFound: no managed engine is called ``name`` (the message lists those there are)."""
    kind = engines.ENGINES.get(name)
    if not isinstance(kind, engines.ManagedKind):
        raise NotFound(f"No engine “{name}” to install; the platform installs {', '.join(engines.managed_names())}.")
    return kind


def installed(name: str) -> dict | None:
    """The install of engine ``name`` on this host (its marker: version, requirements, when), or None
    when it is missing, half-finished or made for other requirements."""
    kind = managed_kind(name)
    try:
        marker = json.loads((venv_dir(name) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("requirements") != list(kind.package.requirements) or not python_of(name).exists():
        return None
    return marker


def install_command(name: str) -> str:
    return f"flask engines install {name}"


@contextmanager
def _locked(name: str):
    engines_dir().mkdir(parents=True, exist_ok=True)
    with open(engines_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second install of the same engine waits for the first
        yield


def _run(command: list[str], echo: Callable[[str], None]) -> None:
    """Run an install step, passing its output on line by line (pip's progress).

    :raise Invalid: it failed; the message has its last lines.
    """
    echo("$ " + " ".join(command))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        if line and not line.startswith("WARNING: Location"):  # pip's note on unused local indexes
            echo(line)
            tail = [*tail[-9:], line]
    if process.wait(PIP_TIMEOUT_S) != 0:
        raise Invalid(f"Installing failed ({' '.join(command[:4])}…):\n" + "\n".join(tail))


def _base_python() -> str:
    """The interpreter engines' virtualenvs are made from: the one under the platform's own venv."""
    return getattr(sys, "_base_executable", None) or sys.executable


def install(name: str, acting, echo: Callable[[str], None] = lambda line: None) -> dict:
    """Install engine ``name`` on this host (nothing to do when it is installed); returns its marker.

    :raise NotFound: no such engine. :raise Invalid: the install failed (the old one, if any, stays).
    """
    require_admin(acting, "Only admins install engines.")
    kind = managed_kind(name)
    with _locked(name):
        if done := installed(name):
            echo(f"{name} {done['version']} is installed in {venv_dir(name)}")
            return done
        target = venv_dir(name)
        building = target.with_name(f".{name}.new")
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        echo(f"Creating {name}'s virtualenv in {target}")
        _run([_base_python(), "-m", "venv", str(building)], echo)
        python = str(building / "bin" / "python")
        pip = [python, "-m", "pip"]
        quiet = ["--disable-pip-version-check"]
        _run([*pip, "install", *quiet, "--progress-bar", "off", *kind.package.requirements], echo)
        if kind.package.remove:
            _run([*pip, "uninstall", *quiet, "-y", *kind.package.remove], echo)
        _run([python, "-I", "-c", f"import {kind.package.module}"], echo)  # it imports, or the install failed
        asked = f"from importlib.metadata import version; print(version({kind.package.distribution!r}))"
        version = subprocess.run(
            [python, "-I", "-c", asked],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        marker = {
            "name": name,
            "version": version,
            "requirements": list(kind.package.requirements),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - started, 1),
            "python": str(target / "bin" / "python"),
        }
        (building / MARKER).write_text(json.dumps(marker, indent=2))
        _open_to_servers(building)
        # Swapped in whole (servers run its python with -m, never its scripts, which name the folder):
        # the old install serves until the new one is complete.
        old = target.with_name(f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        building.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        echo(f"{name} {version} installed in {target} ({marker['seconds']:g} s)")
        return marker


def _open_to_servers(folder: Path) -> None:
    """Servers run as accounts of their own: they read and run what is in the venv (never write it)."""
    for root, folders, files in os.walk(folder):
        for entry in [root, *(os.path.join(root, f) for f in folders)]:
            os.chmod(entry, os.stat(entry).st_mode | 0o055)
        for file in files:
            path = os.path.join(root, file)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o044)
    for parent in (folder.parent,):
        os.chmod(parent, os.stat(parent).st_mode | 0o011)


def overview(acting) -> list[dict]:
    """Every engine kind with its install on this host and the applications that use it (admins only)."""
    require_admin(acting, "Only admins see the engines.")
    users: dict[str, list[str]] = {}
    for engine, application in db.session.execute(
        select(RegistryModel.engine, Application.name)
        .join(Application, Application.model_id == RegistryModel.id)
        .order_by(func.lower(Application.name))
    ):
        users.setdefault(engine, []).append(application)
    listed = []
    for kind in engines.ENGINES.values():
        managed = isinstance(kind, engines.ManagedKind)
        marker = installed(kind.name) if managed else None
        listed.append(
            {
                "name": kind.name,
                "label": kind.label,
                "managed": managed,
                "installed": bool(marker) if managed else True,
                "version": marker["version"] if marker else (None if managed else "built in"),
                "pinned": list(kind.package.requirements) if managed else [],
                "path": str(venv_dir(kind.name)) if managed else None,
                "install_command": install_command(kind.name) if managed else None,
                "installed_at": marker["installed_at"] if marker else None,
                "applications": users.get(kind.name, []),
                "host": this_host(),
            }
        )
    return listed
