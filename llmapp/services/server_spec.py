"""What the platform tells a replica's server: its spec (runtime/spec.py), built from the release it
serves (a ``ServingSetup``), its model's engine kind and the platform's settings. No credentials:
those arrive in the server's environment (server_processes.py)."""

import hashlib
from dataclasses import dataclass

from flask import current_app

from .. import engines
from ..models import Application, Release
from ..runtime.spec import ServerSpec, ServingConfig
from . import applications, metrics, registry


@dataclass(frozen=True)
class ServingSetup:
    """What a replica serves: a release's model, configuration and environment, as stored (a secret
    as its ciphertext). Replicas start from a release, never from the application's row: the row may
    hold an edit that is still a draft."""

    release: int | None
    model_id: int
    config: dict
    env: tuple[tuple[str, str, bool], ...]  # (name, stored value, secret)

    @classmethod
    def of(cls, release: Release) -> "ServingSetup":
        setup = release.setup
        return cls(
            release.number,
            int(setup["model"]["id"]),
            dict(setup["config"]),
            tuple((v["name"], v["ciphertext"] if v["secret"] else v["value"], bool(v["secret"])) for v in setup["env"]),
        )

    @classmethod
    def of_rows(cls, application: Application) -> "ServingSetup":
        """The application's setup as its rows hold it now (a draft, maybe)."""
        env = tuple((var.name, var.value, var.is_secret) for var in application.env_vars)
        return cls(None, application.model_id, dict(application.config), env)

    def serving_config(self) -> ServingConfig:
        return ServingConfig.from_dict({**applications.default_config(), **self.config})


def spec_for(application: Application, port: int, setup: ServingSetup | None = None) -> ServerSpec:
    """The spec of a server of the application serving ``setup`` (default: its rows), on ``port``."""
    setup = setup or ServingSetup.of_rows(application)
    model = registry.get_model(setup.model_id)
    config = current_app.config
    return ServerSpec(
        app_id=str(application.id),
        app_name=application.name,
        deploy_id=application.deploy_id,
        engine=model.engine,
        model_name=model.name,
        engine_options=engines.kind(model.engine).spec_options(model),  # the kind checked at preflight
        config=setup.serving_config(),
        host=config["ADVERTISE_HOST"],
        bind=config["BIND_HOST"],
        port=port,
        grace_s=config["STOP_GRACE_S"],
        max_request_bytes=int(config["MAX_REQUEST_MB"] * 1024 * 1024),
        secret_names=tuple(name for name, _, secret in setup.env if secret),
        metrics_flush_s=config["METRICS_FLUSH_S"],
        metrics_token_sha256=hashlib.sha256(metrics.metrics_token().encode()).hexdigest(),
        max_header_bytes=config["SERVER_MAX_HEADER_KB"] * 1024,
        header_timeout_s=config["SERVER_HEADER_TIMEOUT_S"],
        keep_alive_s=config["SERVER_KEEP_ALIVE_S"],
        max_connections=config["SERVER_MAX_CONNECTIONS"],
        webhook_allow=config["WEBHOOK_ALLOWED_DESTINATIONS"],
        quota_fallback=config["QUOTAS_WITHOUT_REDIS"],
    )
