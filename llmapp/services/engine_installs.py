"""Managed engines' installs on this host: one virtualenv each under the engines folder, with pinned
versions, never the platform's own environment (vLLM pins its own transformers and torch).

``flask engines install NAME`` (llmapp/cli/engines.py) calls ``install``; the deploy's preflight asks
``installed``; the Engines page and ``flask engines list`` read ``overview``. An install is done when
its marker (``llmapp-engine.json``, written last) names the same requirements as the engine's kind:
a half-finished or older install counts as not installed. Installs of one engine on one host are
serialised by a file lock; a new install is built in a folder of its own, made current in one step
(the link engines/NAME), and servers started from an older one keep its files until they stop.
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

import psutil
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from .. import engines
from ..extensions import db
from ..models import Application, RegistryModel
from ..queues import this_host
from . import Invalid, NotFound, audit, require_admin

MARKER = "llmapp-engine.json"


def engines_dir() -> Path:
    """Where engines' virtualenvs live (LLMAPP_ENGINES_DIR; default: engines/ beside the instance folder).
    Not under the instance folder: that one is the platform's own (0700), and servers run as other accounts."""
    configured = current_app.config.get("ENGINES_DIR")
    return Path(configured) if configured else Path(current_app.instance_path).parent / "engines"


def venv_dir(name: str) -> Path:
    return engines_dir() / name


def python_of(name: str) -> Path:
    """The interpreter of the current install's own folder (the link engines/NAME resolved): a server
    started now keeps using that version's files, whatever is installed after it."""
    return venv_dir(name).resolve() / "bin" / "python"


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
    if process.wait() != 0:
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
        started = time.monotonic()
        version_dir = engines_dir() / f".{name}-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
        echo(f"Creating {name}'s virtualenv in {version_dir}")
        try:
            version = _build(kind, version_dir, echo)
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)  # a failed or interrupted install leaves nothing
            raise
        marker = {
            "name": name,
            "version": version,
            "requirements": list(kind.package.requirements),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - started, 1),
        }
        (version_dir / MARKER).write_text(json.dumps(marker, indent=2))
        _open_to_servers(version_dir)
        _make_current(name, version_dir)
        audit.record("engine.install", ("engine", name), {"version": (None, version)})
        try:
            db.session.commit()
        except SQLAlchemyError:  # a host that installs before its database is set up
            db.session.rollback()
            echo("(not written to the audit log: the database can't be reached)")
        echo(f"{name} {version} installed in {venv_dir(name)} ({marker['seconds']:g} s)")
        return marker


def _build(kind, folder: Path, echo) -> str:
    """A virtualenv at ``folder`` with the kind's pinned requirements; returns the version installed."""
    _run([_base_python(), "-m", "venv", str(folder)], echo)
    python = str(folder / "bin" / "python")
    pip, quiet = [python, "-m", "pip"], ["--disable-pip-version-check"]
    _run([*pip, "install", *quiet, "--progress-bar", "off", *kind.package.requirements], echo)
    if kind.package.remove:
        _run([*pip, "uninstall", *quiet, "-y", *kind.package.remove], echo)
    _run([python, "-I", "-c", f"import {kind.package.module}"], echo)  # it imports, or the install failed
    asked = f"from importlib.metadata import version; print(version({kind.package.distribution!r}))"
    found = subprocess.run([python, "-I", "-c", asked], capture_output=True, text=True)
    if found.returncode != 0:
        raise Invalid(f"{kind.package.distribution} was installed but its version can't be read: {found.stderr[-300:]}")
    return found.stdout.strip()


def _make_current(name: str, version_dir: Path) -> None:
    """Point engines/NAME at the new version in one step (a symbolic link replaced atomically). Servers
    run a version's own folder (python_of resolves the link when a server is spawned), so the ones
    running keep their files; older versions go once no process runs from them."""
    target = venv_dir(name)
    if target.is_dir() and not target.is_symlink():  # an install of the first layout: a version like another
        target.rename(target.with_name(f".{name}-first"))
    link = target.with_name(f".{name}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(version_dir.name)
    os.replace(link, target)
    for old in target.parent.glob(f".{name}-*"):
        if old != version_dir and old.is_dir() and not _in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def _in_use(folder: Path) -> bool:
    """Whether a process on this host runs an interpreter of ``folder`` (an engine started from it)."""
    prefix = str(folder) + os.sep
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if command and command[0].startswith(prefix):
            return True
    return False


def _open_to_servers(folder: Path) -> None:
    """Servers run as accounts of their own: they read what is in the venv, run what its owner may run
    (never write any of it). Links are left alone (chmod would follow them out of the folder)."""
    for root, folders, files in os.walk(folder):
        os.chmod(root, os.stat(root).st_mode | 0o055)
        for entry in (os.path.join(root, name) for name in [*folders, *files]):
            if os.path.islink(entry):
                continue
            mode = os.stat(entry).st_mode
            os.chmod(entry, mode | 0o044 | (0o011 if mode & 0o100 else 0))
    os.chmod(folder.parent, os.stat(folder.parent).st_mode | 0o011)


def overview(acting) -> list[dict]:
    """Every engine kind with its install on this host and the applications that use it (admins only)."""
    require_admin(acting, _("Only admins see the engines."))
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
                "label": str(kind.label),
                "managed": managed,
                "installed": bool(marker) if managed else True,
                "version": marker["version"] if marker else (None if managed else _("built in")),
                "pinned": list(kind.package.requirements) if managed else [],
                "path": str(venv_dir(kind.name)) if managed else None,
                "install_command": install_command(kind.name) if managed else None,
                "installed_at": marker["installed_at"] if marker else None,
                "applications": users.get(kind.name, []),
                "host": this_host(),
            }
        )
    return listed
