"""What an engine kind is: everything the platform knows of one engine, in one object.

A kind says which of the registry's engine fields it uses and how they are checked, which model paths
it takes (detection), what it recommends for a model, what the server needs to build it (its spec
options) and how the server builds it, what must be true before a server is spawned, and what the
server's account must be able to read. The registry, the forms, the API, the spec, the deploy and
the server's main all read these; none of them names an engine.
"""

from dataclasses import dataclass
from pathlib import Path

from ..services.recommendations import Recommendation

# The registry's columns an engine may use besides the common ones (name, family, size, precision,
# context), with the value each takes where a kind does not use it: each kind names those it reads in
# ``fields``; the others are reset when a model is saved.
ENGINE_COLUMNS = {"source": "", "base_url": None, "upstream_model": None, "api_key_env": "OPENAI_API_KEY"}


class NotReady(Exception):
    """The model can't be served as registered (checked before a server is spawned); says why."""


@dataclass(frozen=True)
class RegistryField:
    """A registry column as one engine kind uses it."""

    column: str  # one of ENGINE_COLUMNS
    hint: str  # what the column holds for this kind, shown beside the field (a lazy message: llmapp.i18n._l)
    required: str | None = None  # the message when it is left empty (lazy too); None: optional


class EngineKind:
    """One engine kind (subclass it, then add an instance to the table in llmapp/engines/__init__.py)."""

    name: str  # stored in the registry, in specs, shown in tags
    label: str  # what it serves, in a few words, for the engine choice (a lazy message)
    fields: tuple[RegistryField, ...] = ()
    notes: dict[str, str] = {}  # a configuration field → what it means under this kind, if not the usual (lazy)

    # the registry -----------------------------------------------------------------------------------

    def field(self, column: str) -> RegistryField | None:
        return next((f for f in self.fields if f.column == column), None)

    def check(self, values: dict, errors: dict[str, list[str]]) -> None:
        """Check (and normalise in place) this kind's fields of a registry model, adding what is wrong
        to ``errors`` (column → messages). Runs after the common checks (text, length), on stripped
        values; a column that failed those is not judged again."""
        for field in self.fields:
            if field.required and not values.get(field.column) and field.column not in errors:
                errors.setdefault(field.column, []).append(str(field.required))

    def detect(self, path: str):
        """What this kind reads of the model at a path on this host (model_detection.Detected); None when
        it serves nothing from paths.

        :raise model_detection.NotAModel: the path is not a model this kind serves; says why.
        """
        return None

    def source_summary(self, model) -> str:
        """Where the model is, in one line, for the registry's list."""
        return model.source

    # recommendations --------------------------------------------------------------------------------

    def recommend(self, model, memory_bytes: int, cpu_cores: int | None = None) -> Recommendation:
        """A serving configuration for ``model`` on a host with ``memory_bytes`` to serve with
        (``cpu_cores``: a CPU host's cores, which bound its batch; None: it serves on an accelerator)."""
        raise NotImplementedError

    # deploying --------------------------------------------------------------------------------------

    def preflight(self, model) -> None:
        """Before a server is spawned (seconds of imports): fail now when the model can't be served.

        :raise NotReady: with the reason.
        """

    def paths_to_read(self, model) -> list[Path]:
        """Files and folders the server's account must be able to read (besides Python and the code).

        :raise NotReady: when they can't even be listed.
        """
        return []

    def spec_options(self, model) -> dict:
        """What the server needs to build this engine (JSON; no credentials: those come in variables)."""
        return {}

    def example_variables(self, model) -> list[tuple[str, str, bool]]:
        """Variables an application on ``model`` typically sets: (name, value, secret)."""
        return []

    # the server -------------------------------------------------------------------------------------

    def build(self, spec, environ: dict):
        """The runtime engine (runtime/engines) for a server's spec; ``environ``: its environment."""
        raise NotImplementedError
