"""The REST API's request and response bodies (pydantic), from which the OpenAPI document is generated.

The models check a body's shape (types, which fields exist). What values are allowed is the services'
to say, once: the services enforce their rules and answer per field, and what of a rule JSON Schema
can say (required fields, lengths, bounds, choices, patterns) is written here, for the document, from
the services' own constants, never as a second copy.
"""

from typing import Literal

from pydantic import BaseModel, Field

from .. import engines
from ..models import RegistryModel
from ..runtime import plugins as plugin_types
from ..services import (
    EDGE_SPACE_PATTERN,
    NOT_BLANK_PATTERN,
    any_case,
    applications,
    canaries,
    environment,
    lifecycle,
    plugin_documents,
    plugins,
    registry,
    releases,
    users,
)
from .fields import Strict, UtcDateTime, Whole, requiring, when


def _choice(choices) -> Field:
    """A text field whose allowed values the service checks; listed here for the document (null, as
    leaving the field out, takes the default)."""
    return Field(None, json_schema_extra={"enum": [*choices, None]})


def _bounded(field: str):
    low, high = applications.BOUNDS[field]
    extra = {"minimum": low, "maximum": high, "description": str(applications.LABELS[field])}  # English: at import
    return Field(None, json_schema_extra=extra)


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` maps a field ("env.0.name") to its messages."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: dict[str, list[str]] | None = None
    current_status: str | None = Field(None, description="A refused transition: the application's status now.")


class EnvVarIn(Strict):
    """A variable: its name is of ENV_NAME's letters and none a member may not set (see the service)."""

    model_config = requiring("name")

    name: str | None = Field(
        None,
        json_schema_extra={
            "maxLength": applications.MAX_ENV_NAME,
            # ENV_NAME, with what the service strips around it
            "pattern": f"^{EDGE_SPACE_PATTERN}{environment.ENV_NAME.pattern[1:-1]}{EDGE_SPACE_PATTERN}$",
            "not": {"pattern": environment.refused_pattern(EDGE_SPACE_PATTERN)},
        },
    )
    value: str = Field("", json_schema_extra={"maxLength": applications.MAX_ENV_VALUE})
    secret: bool = False
    secret_id: Whole | None = Field(None, description="Keep the stored value of this secret variable (its id).")


class ApplicationIn(Strict):
    """An application's fields. The types are checked here; everything else (bounds, names) by the
    applications service, whose errors come back per field. Only name and model_id must be given. On
    create, a serving field left out takes the model's recommendation (GET
    /api/v1/models/{model_id}/recommendation) or the platform's default; on change, a field left out
    keeps its value."""

    model_config = requiring(*applications.REQUIRED)

    name: str | None = Field(
        None,
        description=applications.NAME_RULE + " A name stored before this rule is kept while it is not changed.",
        json_schema_extra={"maxLength": applications.MAX_NAME, "pattern": NOT_BLANK_PATTERN},
    )
    model_id: Whole | None = Field(None, description="A registry model's id (GET /api/v1/models).")
    description: str | None = Field(None, json_schema_extra={"maxLength": applications.MAX_DESCRIPTION})
    max_concurrency: Whole | None = _bounded("max_concurrency")
    timeout_s: Whole | None = _bounded("timeout_s")
    log_level: str | None = _choice(applications.LOG_LEVELS)
    cache_size: Whole | None = _bounded("cache_size")
    batch_size: Whole | None = _bounded("batch_size")
    restart_policy: str | None = _choice(applications.RESTART_POLICIES)
    max_restarts: Whole | None = _bounded("max_restarts")
    replicas: Whole | None = _bounded("replicas")
    context_size: Whole | None = _bounded("context_size")
    threads: Whole | None = _bounded("threads")
    gpu_memory_share: Whole | None = _bounded("gpu_memory_share")
    tensor_parallel: Whole | None = _bounded("tensor_parallel")
    host: str | None = Field(
        None,
        json_schema_extra={"pattern": "^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"},
        description="The host it is pinned to (GET /api/v1/hosts); empty: any host that fits.",
    )
    log_lines: Whole | None = _bounded("log_lines")
    log_days: Whole | None = _bounded("log_days")
    env: list[EnvVarIn] = Field(default_factory=list, json_schema_extra={"maxItems": applications.MAX_ENV_VARS})
    note: str | None = Field(
        None,
        description="Why (one line): kept with the release this save makes; the service keeps its first "
        f"{releases.MAX_NOTE} characters.",
    )


class ReleaseOut(BaseModel):
    number: int
    created_at: UtcDateTime
    author: str | None = Field(description="Who saved it (null: the command line, or the platform).")
    note: str
    current: bool = Field(description="Whether the application's server runs this release now.")
    setup: dict = Field(description="Model, configuration, environment (secrets masked) and plugin chain.")


class ReleaseList(BaseModel):
    items: list[ReleaseOut]


class EnvVarOut(BaseModel):
    id: int
    name: str
    value: str = Field(description="A secret's value is never sent: “••••”.")
    secret: bool


class ApplicationOut(BaseModel):
    id: str
    name: str
    description: str
    model_id: int
    model: str
    owner: str | None
    status: Literal[lifecycle.STATUSES]  # type: ignore[valid-type]
    endpoint: str | None
    last_error: str | None
    config: dict[str, int | str | float]
    env: list[EnvVarOut]
    created_at: UtcDateTime
    updated_at: UtcDateTime
    deployed_at: UtcDateTime | None
    release: int | None = Field(description="The release its replicas run (null: it has not run).")
    rolling_to: int | None = Field(description="While it runs: the release being rolled out beside it.")
    canary_release: int | None = Field(description="A release serving beside ``release`` as a canary.")
    canary_percent: int = Field(description="The canary's share of the gateway's requests (%).")
    gateway: str = Field(description="The platform's OpenAI base URL; the application's name is the model.")


class ApplicationPage(BaseModel):
    items: list[ApplicationOut]
    page: int
    per_page: int
    total: int
    pages: int


class ApplicationQuery(BaseModel):
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(25, ge=1, le=100)
    status: Literal[lifecycle.STATUSES] | None = None  # type: ignore[valid-type]
    q: str = Field("", max_length=100, description="Part of the name, any case.")
    sort: Literal["-updated", "updated", "name", "-name"] = "-updated"


class Transition(BaseModel):
    id: str
    status: Literal[lifecycle.STATUSES]  # type: ignore[valid-type]
    deploy_id: str | None = None
    release: int | None = Field(None, description="The release being deployed or rolled out.")


class CanaryIn(Strict):
    share: int = Field(
        json_schema_extra={"minimum": canaries.SHARES[0], "maximum": canaries.SHARES[1]},
        description="The canary's share of the gateway's requests, in percent.",
    )


class LogLineOut(BaseModel):
    id: str
    time: float
    level: str
    source: str
    message: str
    request_id: str | None = None


class LogPage(BaseModel):
    items: list[LogLineOut]
    next_before: str | None = Field(None, description="Pass as ?before= for the older lines.")


class LogQuery(BaseModel):
    limit: int = Field(200, ge=1, le=1000)
    before: str | None = Field(None, max_length=40, description="Only lines older than this id.")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    q: str = Field("", max_length=200)


class MetricsQuery(BaseModel):
    window: Literal["15m", "1h", "24h", "7d"] = "1h"


class ModelOut(BaseModel):
    id: int
    name: str
    family: str
    parameters_billions: float
    precision: str
    context_length: int
    engine: str
    source: str
    base_url: str | None
    upstream_model: str | None
    api_key_env: str


class ModelList(BaseModel):
    items: list[ModelOut]


class ModelIn(Strict):
    """A registry model's fields; the registry service judges them (errors per field). What an engine's
    columns must hold is the engine's (a transformers model's source is a model directory on the
    platform's host, checked there)."""

    model_config = requiring(
        *registry.REQUIRED,
        also=[
            when("engine", kind.name, {"required": [field.column for field in kind.fields if field.required]})
            for kind in engines.ENGINES.values()
            if any(field.required for field in kind.fields)
        ],
    )

    name: str | None = Field(
        None, json_schema_extra={"maxLength": registry.LIMITS["name"], "pattern": NOT_BLANK_PATTERN}
    )
    family: str | None = Field(None, json_schema_extra={"maxLength": registry.LIMITS["family"]})
    parameters_billions: float | int | None = Field(
        None,
        json_schema_extra={
            "minimum": registry.PARAMETERS_BILLIONS[0],
            "maximum": registry.PARAMETERS_BILLIONS[1],
        },
    )
    precision: str | None = _choice(RegistryModel.PRECISIONS)
    context_length: Whole | None = Field(
        None, json_schema_extra={"minimum": registry.CONTEXT_LENGTH[0], "maximum": registry.CONTEXT_LENGTH[1]}
    )
    engine: str | None = _choice(engines.names())
    # What each engine column holds, as the engines say it (llmapp/engines).
    source: str | None = Field(None, description=engines.column_hints().get("source"))
    base_url: str | None = Field(None, description=engines.column_hints().get("base_url"))
    upstream_model: str | None = Field(None, description=engines.column_hints().get("upstream_model"))
    api_key_env: str | None = Field(None, description=engines.column_hints().get("api_key_env"))


class PluginIn(Strict):
    """A plugin; its configuration is checked against its type's JSON Schema by the plugins service
    (and a webhook's URL by where webhooks may go, a pattern by what RE2 compiles)."""

    model_config = requiring(
        *plugins.REQUIRED,
        also=[
            when(
                "type",
                name,
                {
                    "properties": {"config": {k: v for k, v in kind.schema.items() if k != "$schema"}},
                    **({"required": ["config"]} if kind.schema.get("required") else {}),
                },
            )
            for name, kind in plugin_types.TYPES.items()
        ],
    )

    name: str | None = Field(None, json_schema_extra={"maxLength": plugins.MAX_NAME, "pattern": NOT_BLANK_PATTERN})
    type: str | None = _choice(plugin_types.TYPES)
    description: str = ""
    version: str = ""
    config: dict = Field(default_factory=dict, description="Settings of the type (GET /api/v1/plugin-types).")
    enabled: bool = True
    published: bool = Field(False, description="Admins only: offer it to every member.")


class DocumentOut(BaseModel):
    id: int
    name: str
    size: int


class PluginOut(BaseModel):
    id: int
    name: str
    type: str
    description: str
    version: str
    config: dict = Field(description="Secret settings are never sent: “••••”.")
    enabled: bool
    published: bool
    owner: str | None
    documents: list[DocumentOut]


class PluginList(BaseModel):
    items: list[PluginOut]


class PluginQuery(BaseModel):
    q: str = Field("", max_length=100)
    type: str = Field("", max_length=40)
    enabled: Literal["", "yes", "no"] = ""


class DocumentIn(Strict):
    name: str = Field(
        description="A file name of one of its kinds (no folder, no control characters, no edge spaces).",
        json_schema_extra={
            "maxLength": plugin_documents.MAX_DOCUMENT_NAME,
            "pattern": "(" + "|".join(any_case(suffix) for suffix in plugin_documents.DOCUMENT_SUFFIXES) + ")$",
        },
    )
    text: str = Field(json_schema_extra={"pattern": plugin_documents.NOT_BLANK_TEXT_PATTERN})


class PluginType(BaseModel):
    name: str
    title: str
    description: str
    config_schema: dict = Field(description="The JSON Schema of its configuration.")


class PluginTypeList(BaseModel):
    items: list[PluginType]


class ChainStep(BaseModel):
    position: int
    plugin_id: int
    name: str
    type: str
    enabled: bool = Field(description="On for this application.")
    plugin_enabled: bool
    overrides: dict


class Chain(BaseModel):
    items: list[ChainStep]


class AttachIn(Strict):
    plugin_id: Whole


class ChainStepIn(Strict):
    enabled: bool | None = None
    overrides: dict | None = Field(None, description="This application's values of the plugin's settings.")
    move: Literal["up", "down"] | None = None


class UserOut(BaseModel):
    id: int
    email: str
    admin: bool
    disabled: bool
    created_at: UtcDateTime
    last_login_at: UtcDateTime | None


class UserList(BaseModel):
    items: list[UserOut]


def _typed_email() -> str:
    """The users service's address (users.EMAIL), with the edge characters it removes (users.EDGE)."""
    edge = "[" + "".join(f"\\x{ord(c):02x}" for c in users.EDGE) + "]*"
    return "^" + edge + users.EMAIL.pattern[1:-1] + edge + "$"


class UserIn(Strict):
    model_config = requiring(*users.REQUIRED)

    email: str | None = Field(None, json_schema_extra={"maxLength": users.MAX_EMAIL, "pattern": _typed_email()})
    password: str | None = Field(
        None, json_schema_extra={"minLength": users.MIN_PASSWORD, "maxLength": users.MAX_PASSWORD}
    )
    admin: bool = False


class UserChange(Strict):
    admin: bool | None = None
    disabled: bool | None = Field(None, description="Disabling ends the user's logins and revokes their tokens.")


class NewPassword(BaseModel):
    password: str = Field(description="Shown once, to hand over; the user's logins have ended.")


class RecommendationOut(BaseModel):
    """The serving configuration the platform recommends for a model on this platform's hardware."""

    config: dict[str, int] = Field(description="max_concurrency, batch_size, timeout_s, cache_size.")
    fits: bool = Field(description="Whether the model's weights fit the memory available for serving.")
    model_memory_bytes: int
    kv_cache_per_sequence_bytes: int
    available_memory_bytes: int
    cpu_cores: int | None = Field(description="The CPU host's cores it was reckoned for; null: an accelerator.")
    decided_by: dict[str, str] = Field(
        description="What bounded max_concurrency and batch_size: memory, cores, accelerator or limit."
    )
    reasoning: str
