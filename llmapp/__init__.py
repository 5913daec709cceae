"""llmapp: a self-hosted platform to create, deploy, manage and monitor LLM applications."""

import os
from pathlib import Path

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy import event
from sqlalchemy.engine import Engine

from . import config as llmapp_config
from .extensions import csrf, db, htmx, limiter, login_manager, migrate
from .i18n import _l

ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: dict | None = None) -> Flask:
    """Build the platform web app: config, extensions, blueprints. It neither migrates nor seeds."""
    app = Flask(
        __name__,
        # instance/ holds the SQLite file, the embedded Redis and the servers' run files
        instance_path=os.environ.get("LLMAPP_INSTANCE_PATH") or str(ROOT / "instance"),
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(llmapp_config.load(app.instance_path, test_config))
    from .web import IdConverter

    app.url_map.converters["id"] = IdConverter
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)

    if app.config["TRUSTED_PROXIES"]:  # the client's address and scheme, as the proxies in front saw them
        from werkzeug.middleware.proxy_fix import ProxyFix

        proxies = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)

    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_template_helpers(app)
    register_cli(app)

    from .web import add_security_headers

    app.after_request(add_security_headers)
    return app


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = _l("Please log in to continue.")
    login_manager.localize_callback = str  # the flash is stored in the session: a str, in the reader's language
    login_manager.login_message_category = "info"
    csrf.init_app(app)
    htmx.init_app(app)
    limiter.init_app(app)

    from . import i18n

    i18n.init_app(app)

    from .services import users

    @login_manager.user_loader
    def load_user(session_id: str):
        return users.user_of_session(session_id)


SQLITE_BUSY_TIMEOUT_MS = 30_000


@event.listens_for(Engine, "connect")
def _sqlite_foreign_keys(dbapi_connection, _record):
    # SQLite enforces ON DELETE CASCADE / RESTRICT only when asked, per connection.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # The web server, the workers, their jobs and the CLI write one file: a write waits for another's
        # this long, not sqlite3's 5 s, which a busy host's descheduled writer can outlast.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()
        # SQLite's own lower() knows ASCII only: "Äpp" and "äpp" would be two names to the unique
        # indexes on lower(name), one to the services (and to PostgreSQL). Python's is the one rule.
        dbapi_connection.create_function(
            "lower", 1, lambda text: text.lower() if text is not None else None, deterministic=True
        )


def register_blueprints(app: Flask) -> None:
    from .api import bp as api_bp
    from .api.page import page_bp as api_page_bp
    from .applications import bp as applications_bp
    from .auth import bp as auth_bp
    from .hosts import bp as hosts_bp
    from .plugins import bp as plugins_bp
    from .prometheus import bp as prometheus_bp
    from .registry import bp as registry_bp
    from .reports import bp as reports_bp
    from .users import bp as users_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(applications_bp)
    app.register_blueprint(registry_bp)
    app.register_blueprint(plugins_bp)
    app.register_blueprint(prometheus_bp)
    app.register_blueprint(users_bp)
    app.register_blueprint(reports_bp)
    app.register_blueprint(hosts_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(api_page_bp)


def register_error_handlers(app: Flask) -> None:
    messages = {
        400: _l("The request could not be understood."),
        401: _l("This needs credentials that were not given."),
        403: _l("You are not allowed to do that."),
        413: _l("That was too much to send at once: the request is larger than this platform accepts."),
        404: _l("There is nothing here, or it is not yours to see."),
        405: _l("That action is not allowed here."),
        429: _l("Too many attempts. Wait a minute and try again."),
        500: _l("Something went wrong on our side. The error was logged; try again."),
    }

    def render_error(code: int, message: str | None = None):
        return render_template("error.html", code=code, message=message or messages[code]), code

    @app.errorhandler(CSRFError)
    def csrf_error(e):
        return render_error(400, _l("Your form expired or came from elsewhere. Reload the page and try again."))

    from .services import Forbidden

    @app.errorhandler(Forbidden)
    def forbidden(e):
        """A service refused the user (an admin's operation, a plugin not theirs): the 403 page with its
        reason. The API answers its own problem document instead (its blueprint's handler comes first)."""
        return render_error(403, str(e))

    def handle(e):
        code = getattr(e, "code", 500) or 500
        if request.path.startswith("/api/v1/"):  # the REST API answers problem documents, never pages
            from .api import problems

            return problems.from_http_error(e) if code != 500 else problems.problem(500, str(messages[500]))
        # A message of ours (abort(404, "...")) is shown; werkzeug's stock descriptions are not.
        custom = getattr(e, "description", None) if code in (403, 404) else None
        if custom == getattr(type(e), "description", None):
            custom = None
        return render_error(code, custom)

    for code in messages:
        app.register_error_handler(code, handle)


def register_template_helpers(app: Flask) -> None:
    from . import engines
    from .secrets_box import MASK
    from .services import applications, deployments, lifecycle, plugins, quotas, releases, routing

    app.jinja_env.globals.update(
        allowed_actions=lifecycle.allowed_actions,
        gateway_url=routing.gateway_url,
        may_change_plugin=plugins.may_change,  # which buttons a plugin's row shows: the service's rule
        STATUSES=lifecycle.STATUSES,
        STATUS_LABELS=lifecycle.STATUS_LABELS,
        PHASE_LABELS=deployments.PHASE_LABELS,
        REPLICA_LABELS=deployments.REPLICA_LABELS,
        shown_note=releases.shown_note,  # a release's note in the page's language
        MASK=MASK,
        ENGINES=engines.ENGINES,  # a registry model's engine kind: ENGINES[model.engine]
        CONFIG_DEFAULTS=applications.DEFAULT_CONFIG,  # a field an older application's config lacks
        engine_column_hints=engines.column_hints,
        describe_limits=quotas.describe,  # "5 requests per minute, …" or "no limits"
        LIMIT_LABELS=quotas.LABELS,
        CACHE_HIT_COST=quotas.CACHE_HIT_COST,
    )

    from . import charts

    app.jinja_env.globals.update(
        pct=lambda value: "—" if value is None else f"{value * 100:.1f} %",
        secs=lambda value: "—" if value is None else charts.seconds(value),
    )

    @app.template_filter("bytes")
    def format_bytes(value):
        for unit in ("B", "KB", "MB", "GB"):
            if value < 1024 or unit == "GB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024

    @app.template_filter("logtime")
    def format_log_time(ts, full=False):
        from datetime import UTC, datetime

        moment = datetime.fromtimestamp(float(ts), UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if full else moment.strftime("%H:%M:%S")

    @app.template_filter("shell_json")
    def shell_json(value) -> str:
        """``value`` as JSON in one single-quoted shell word (a quote inside it closed and escaped)."""
        import json

        return "'" + json.dumps(value, ensure_ascii=False, indent=2).replace("'", "'\\''") + "'"


def register_cli(app: Flask) -> None:
    from .cli import register

    register(app)
