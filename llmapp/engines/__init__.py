"""The engine table: every engine kind the platform can serve a model with, one module each.

The registry (its checks, the form's choices and hints, the API's schema), recommendations, the deploy
(preflight, the server's account, the spec) and the server's main all read this table; nothing else
names an engine. Adding an engine is a module with an ``EngineKind`` (llmapp/engines/kind.py) and
one entry in ``ENGINES``.
"""

from flask_babel import gettext as _

from ..services.model_detection import Detected, NotAModel
from . import llamacpp, openai, transformers, transformers_serve, vllm
from .kind import ENGINE_COLUMNS, EngineKind, NotReady, RegistryField
from .managed import ManagedKind

ENGINES: dict[str, EngineKind] = {
    kind.name: kind for kind in (transformers.KIND, openai.KIND, llamacpp.KIND, vllm.KIND, transformers_serve.KIND)
}

__all__ = [
    "ENGINES", "ENGINE_COLUMNS", "Detected", "EngineKind", "ManagedKind", "NotAModel", "NotReady", "RegistryField",
    "detect", "kind", "managed_names", "names",
]  # fmt: skip


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def managed_names() -> tuple[str, ...]:
    """The engines the platform installs and starts itself (llmapp/engines/managed.py)."""
    return tuple(name for name, kind in ENGINES.items() if isinstance(kind, ManagedKind))


def kind(name: str) -> EngineKind:
    """The engine kind called ``name``.

    :raise NotReady: none is (a registry row from an older or newer platform, or an engine removed).
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise NotReady(
            _(
                "The model's engine “%(engine)s” is not one this platform serves (it serves %(engines)s).",
                engine=name,
                engines=", ".join(ENGINES),
            )
        ) from None


def detect(path: str) -> Detected:
    """What the first engine that takes the model at ``path`` reads of it, with that engine's name.

    :raise NotAModel: no engine takes it; the message is why (the first engine that reads local paths).
    """
    reasons = []
    for engine in ENGINES.values():
        try:
            found = engine.detect(path)
        except NotAModel as e:
            reasons.append(str(e))
            continue
        if found is not None:
            found.engine = engine.name
            return found
    raise NotAModel(reasons[0] if reasons else _("No engine serves a model from a path on this host."))


def column_hints() -> dict[str, str]:
    """Each engine column's hint for the registry form: what it holds for each kind that uses it (in the
    request's language; at import time, as the API's document reads them, in English)."""
    hints: dict[str, list[str]] = {}
    for engine in ENGINES.values():
        for field in engine.fields:
            hints.setdefault(field.column, []).append(str(field.hint))
    return {column: " ".join(dict.fromkeys(parts)) for column, parts in hints.items()}
