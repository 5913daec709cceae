"""What the platform tells an application's server: its spec (runtime/spec.py), built from the
application, its model's engine kind and the platform's settings. No credentials: those arrive in
the server's environment (server_processes.py)."""

import hashlib

from flask import current_app

from .. import engines
from ..models import Application
from ..runtime.spec import ServerSpec, ServingConfig
from . import applications, metrics, registry


def spec_for(application: Application, port: int) -> ServerSpec:
    """The spec of the application's server, to listen on ``port``."""
    model = registry.get_model(application.model_id)
    config = current_app.config
    return ServerSpec(
        app_id=str(application.id),
        app_name=application.name,
        deploy_id=application.deploy_id,
        engine=model.engine,
        model_name=model.name,
        engine_options=engines.kind(model.engine).spec_options(model),  # the kind checked at preflight
        config=ServingConfig.from_dict({**applications.default_config(), **application.config}),
        host=config["ADVERTISE_HOST"],
        bind=config["BIND_HOST"],
        port=port,
        grace_s=config["STOP_GRACE_S"],
        max_request_bytes=int(config["MAX_REQUEST_MB"] * 1024 * 1024),
        secret_names=tuple(var.name for var in application.env_vars if var.is_secret),
        metrics_flush_s=config["METRICS_FLUSH_S"],
        metrics_token_sha256=hashlib.sha256(metrics.metrics_token().encode()).hexdigest(),
        max_header_bytes=config["SERVER_MAX_HEADER_KB"] * 1024,
        header_timeout_s=config["SERVER_HEADER_TIMEOUT_S"],
        keep_alive_s=config["SERVER_KEEP_ALIVE_S"],
        max_connections=config["SERVER_MAX_CONNECTIONS"],
        webhook_allow=config["WEBHOOK_ALLOWED_DESTINATIONS"],
    )
