"""What the platform hands an app server: one versioned, typed structure, written by the deploy job
and read by the server the same way.

It goes to disk as JSON readable by its owner only, and holds no credentials: the Redis URL (which
may carry a password) and the application's environment variables arrive in the process environment.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..netguard import allow_entries

VERSION = 2  # 2: the engine's own options in engine_options (1 had them as flat fields)
REDIS_URL_VARIABLE = "LLMAPP_REDIS_URL"  # how the server learns where Redis is
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServingConfig:
    """The application's configuration fields, as the server applies them."""

    max_concurrency: int = 8
    timeout_s: int = 60
    log_level: str = "INFO"
    cache_size: int = 128
    batch_size: int = 4
    restart_policy: str = "on-failure"
    max_restarts: int = 3
    replicas: int = 1  # server processes behind the gateway, each with the whole model loaded
    # What an engine is started with (each kind maps them onto its own settings; llmapp/engines)
    context_size: int = 0  # tokens of prompt and answer a request may take; 0: the model's own
    threads: int = 0  # CPU threads; 0: the engine's default
    gpu_memory_share: int = 90  # percent of each GPU's memory the engine may take (vLLM)
    tensor_parallel: int = 1  # GPUs the model is split across (vLLM)
    host: str = ""  # the host the application is pinned to (services/hosts.py); "": any host that fits
    log_lines: int = 2000  # the application's log keeps at most this many lines…
    log_days: float = 7  # …and none older than this

    @classmethod
    def from_dict(cls, values: dict) -> "ServingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class ServerSpec:
    app_id: str
    app_name: str
    engine: str  # a name of the engine table (llmapp/engines), which builds the engine from the spec
    config: ServingConfig
    port: int
    host: str = "127.0.0.1"  # the host name clients use
    bind: str = "127.0.0.1"  # the address the server listens on
    deploy_id: str = ""
    model_name: str = ""
    engine_options: dict = field(default_factory=dict)  # the engine kind's own (EngineKind.spec_options)
    grace_s: float = 10.0  # after SIGTERM, in-flight requests get this long
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    secret_names: tuple[str, ...] = field(default_factory=tuple)  # their values are redacted from logs
    metrics_flush_s: float = 10.0  # how often the server adds its counts to the application's series
    metrics_token_sha256: str = ""  # /metrics answers a bearer token with this digest (not the token itself)
    # Bounds on connections before a key is checked (http_limits.HttpLimits: header bytes and time, keep-alive)
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 512
    # Webhook destinations allowed although private or loopback (netguard): hosts, addresses, CIDRs; a
    # comma-separated string (the setting as configured) is split.
    webhook_allow: tuple[str, ...] = ()
    # A key with limits while Redis (where they are counted) is unreachable: "serve" it without them, or
    # "refuse" it (503); runtime/quotas.py
    quota_fallback: str = "serve"
    version: int = VERSION

    def __post_init__(self):
        object.__setattr__(self, "webhook_allow", allow_entries(self.webhook_allow))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ServerSpec":
        """:raise ValueError: not a spec of a version this server reads."""
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"Spec version {data.get('version')!r}; this server reads version {VERSION}.")
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["config"] = ServingConfig.from_dict(data.get("config") or {})
        data["secret_names"] = tuple(data.get("secret_names") or ())
        return cls(**data)

    def write(self, path: Path) -> None:
        """Write for the owner's eyes only (0600), replacing any earlier spec atomically."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: str | Path) -> "ServerSpec":
        return cls.from_json(Path(path).read_text())
