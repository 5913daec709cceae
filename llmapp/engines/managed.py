"""Managed engines: a real engine (llama.cpp, vLLM, `transformers serve`) that the platform installs in a
virtualenv of its own (services/engine_installs.py) and starts for each replica, behind the app server.

The app server stays in front (keys, limits, cache, plugins, metrics, logs, the gateway's routing):
its engine is runtime/engines/managed.py's ``ManagedEngine``, which starts the real engine as its child
on a Unix socket with a random token (launch.py, under the engine's own interpreter) and forwards to
it as the upstream engine does. A kind here says what to install, how the application's serving fields
map onto the engine's settings, what its health and metrics endpoints are, and what the deploy phases
read from its output.
"""

from dataclasses import dataclass
from pathlib import Path

from flask_babel import gettext as _

from .kind import EngineKind, NotReady
from .transformers import HuggingFaceDirectory

LAUNCHER = Path(__file__).with_name("launch.py")


@dataclass(frozen=True)
class Package:
    """What `flask engines install NAME` puts in the engine's virtualenv."""

    requirements: tuple[str, ...]  # pinned: the versions the tests ran against
    module: str  # imported after the install: it must import, or the install failed
    distribution: str  # whose version the Engines page shows
    remove: tuple[str, ...] = ()  # uninstalled afterwards (packages that break the engine's import here)


@dataclass(frozen=True)
class Gauge:
    """One of the engine's own metrics, shown on the Monitoring pane."""

    name: str  # ours: running, waiting, kv_cache_use
    metric: str  # the engine's, in its Prometheus text
    scale: float = 1.0  # ours = theirs × scale (a percentage from a ratio)


class ManagedKind(EngineKind):
    """A kind whose engine the platform installs and runs (subclass: package, launch settings, gauges)."""

    package: Package
    health_path = "/health"  # 200 when it serves (with its token)
    metrics_path = "/metrics"
    gauges: tuple[Gauge, ...] = ()
    # Text of the engine's output that says it is loading the weights (the deploy's "loading weights").
    loading_markers: tuple[str, ...] = ()

    def preflight(self, model):
        from ..queues import this_host
        from ..services import engine_installs

        if not engine_installs.installed(self.name):
            raise NotReady(
                _(
                    "The %(engine)s engine is not installed on %(host)s: run `%(command)s` there, then deploy again.",
                    engine=self.name,
                    host=this_host(),
                    command=engine_installs.install_command(self.name),
                )
            )

    def paths_to_read(self, model):
        from ..services import engine_installs

        venv = engine_installs.python_of(self.name).parent.parent  # the current version's own folder
        return [venv, venv / "pyvenv.cfg", LAUNCHER, Path(model.source)]

    def spec_options(self, model):
        from ..services import engine_installs

        return {
            "path": model.source,
            "context_length": model.context_length,  # context_of's ceiling
            "python": str(engine_installs.python_of(self.name)),
            "launcher": str(LAUNCHER),
        }

    def launch_settings(self, spec, options: dict) -> dict:
        """What launch.py is told besides the engine, port, token and model: the serving fields as this
        engine's own settings (and, for vLLM, its command line: fields only, never free-form flags)."""
        raise NotImplementedError

    def upstream_model(self, spec, options: dict) -> str:
        """The model name the engine answers to (launch.py gives it the application's name)."""
        return spec.app_name

    def context_of(self, spec, model_context: int | None) -> int:
        """The context size a slot gets: the field's, else the model's own, at most the model's."""
        own = model_context or 2048
        return min(spec.config.context_size, own) if spec.config.context_size else own

    def build(self, spec, environ):
        from ..runtime.engines.managed import ManagedEngine

        return ManagedEngine(self, spec, environ)


class ManagedDirectoryKind(HuggingFaceDirectory, ManagedKind):
    """A managed engine that serves a local Hugging Face directory (vLLM, transformers serve)."""

    def __init__(self):
        self.fields = (self.source_field(),)

    def preflight(self, model):
        self.check_model(model)
        super().preflight(model)

    def paths_to_read(self, model):
        return [*super().paths_to_read(model)[:-1], *self.model_paths(model)]  # the model folder and its files
