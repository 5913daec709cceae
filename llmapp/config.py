"""Configuration, read once at start-up from defaults, the environment and an override mapping."""

import os
import secrets
from pathlib import Path

DEVELOPMENT, PRODUCTION, TESTING = "development", "production", "testing"

DEFAULTS = {
    "LLMAPP_ENV": PRODUCTION,
    "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "REMEMBER_COOKIE_HTTPONLY": True,
    "REMEMBER_COOKIE_SAMESITE": "Lax",
    "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
    "LOGIN_RATE_LIMIT": "30 per minute",  # per client address
    "LOGIN_ACCOUNT_RATE_LIMIT": "10 per minute",  # per account, from any address
    "TRUSTED_PROXIES": 0,  # how many proxies in front set X-Forwarded-For/-Proto (0: trust no such header)
    "API_RATE_LIMIT": "600 per minute",  # per personal access token
    "APPLICATIONS_PER_PAGE": 25,
    # Memory the recommendations plan for, in GB; None means "this host's RAM".
    "ACCELERATOR_MEMORY_GB": None,
    "DEMO": False,
    # Serving processes (see services/server_processes.py)
    "HOSTNAME": None,  # this machine's name among the workers; default: socket.gethostname()
    "BIND_HOST": "127.0.0.1",  # where app servers listen; 0.0.0.0 to serve other machines
    "ADVERTISE_HOST": "127.0.0.1",  # the host name in endpoint URLs
    # The gateway (llmapp/gateway/): the port `python app.py` runs it on, and the base URL clients are
    # shown (default: http://ADVERTISE_HOST:GATEWAY_PORT/v1; set it to the load balancer's in production).
    "GATEWAY_PORT": 5001,
    "GATEWAY_URL": None,
    # Ports for app servers: each application keeps the one it got while it is free. Outside Linux's
    # ephemeral range (32768-60999), so no outgoing connection takes an application's port meanwhile.
    "SERVER_PORTS": "18000-18999",
    # Managed engines' virtualenvs (services/engine_installs.py); default: engines/ beside the instance folder
    "ENGINES_DIR": None,
    "DEPLOY_TIMEOUT_S": 180,  # from process start to ready, at most
    "STOP_GRACE_S": 10,  # in-flight requests get this long to finish after a stop
    "RECONCILE_INTERVAL_S": 5,
    "MAX_REQUEST_MB": 4,  # an app server answers 413 to larger request bodies
    "METRICS_FLUSH_S": 10,  # how often app servers add their counts to the series in Redis
    "LOG_LINES": 2000,  # a new application's log retention (each application can change its own)
    "LOG_DAYS": 7,
    "LOG_TRIM_INTERVAL_S": 60,  # how often the workers apply every application's log retention
    "LOG_HEARTBEAT_S": 15,  # an idle live log stream sends a comment this often (proxies, dead clients)
    "LOG_STREAM_BLOCK_S": 5,  # how long a log reader waits for new lines before looking again
    "METRICS_TOKEN": None,  # Prometheus's token for /metrics and the target list; default: from SECRET_KEY
    "SERVER_ENV_ALLOW": "",  # more of the worker's environment variables for app servers (comma-separated)
    "SERVER_USER": None,  # one account for every app server (as root); default: an account of its own each
    "SERVER_UID_BASE": 200000,  # as root, a server's own uid: this plus its port's place in SERVER_PORTS
    # Each worker forks app servers from a process that has imported torch and transformers once
    # (llmapp/runtime/forkserver.py); off: each server starts a Python of its own. FORK_SERVER_SOCKET:
    # one already running on this host to use instead (the test suite shares one between its workers).
    "WARM_START": True,
    "FORK_SERVER_SOCKET": None,
    # What a client may hold of an app server before its key is checked (llmapp/runtime/http_limits.py)
    "SERVER_MAX_HEADER_KB": 64,
    "SERVER_HEADER_TIMEOUT_S": 10,
    "SERVER_KEEP_ALIVE_S": 5,
    "SERVER_MAX_CONNECTIONS": 512,
    # The platform's pages: larger bodies are refused (413) before they are parsed.
    "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
    # Logins are rate limited per address; while Redis is unreachable, in this process's memory.
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
    "RATELIMIT_SWALLOW_ERRORS": True,
    # Webhook destinations allowed although private or loopback (llmapp/netguard.py): comma-separated
    # host names, addresses and CIDR networks, e.g. "audit.internal,10.1.2.0/24". Empty: none.
    "WEBHOOK_ALLOWED_DESTINATIONS": "",
    # A key with limits (quotas) while Redis, where they are counted, is unreachable: "serve" it without
    # them (a log line says so) or "refuse" it (503). Serve: an outage of the counter should not take every
    # application down; the keys themselves still hold (README, "Quotas").
    "QUOTAS_WITHOUT_REDIS": "serve",
    # Workers announce their host every HOST_HEARTBEAT_S; a host silent for HOST_DOWN_AFTER_S is down
    # (its replicas lost, their applications placed again elsewhere).
    "HOST_HEARTBEAT_S": 5,
    "HOST_DOWN_AFTER_S": 30,
    # Audit log entries older than this many days are deleted (0: kept for ever).
    "AUDIT_RETENTION_DAYS": 0,
}

# Environment variables read at start-up, and the config key each one sets.
ENVIRONMENT = {
    "LLMAPP_ENV": "LLMAPP_ENV",
    "DATABASE_URL": "SQLALCHEMY_DATABASE_URI",
    "REDIS_URL": "REDIS_URL",
    "SECRET_KEY": "SECRET_KEY",
    "LLMAPP_SECRETS_KEY": "SECRETS_KEY",
    "LLMAPP_ACCELERATOR_MEMORY_GB": "ACCELERATOR_MEMORY_GB",
    "LLMAPP_DEMO": "DEMO",
    "LLMAPP_LOGIN_RATE_LIMIT": "LOGIN_RATE_LIMIT",
    "LLMAPP_LOGIN_ACCOUNT_RATE_LIMIT": "LOGIN_ACCOUNT_RATE_LIMIT",
    "LLMAPP_TRUSTED_PROXIES": "TRUSTED_PROXIES",
    "LLMAPP_API_RATE_LIMIT": "API_RATE_LIMIT",
    "LLMAPP_HOSTNAME": "HOSTNAME",
    "LLMAPP_BIND_HOST": "BIND_HOST",
    "LLMAPP_ADVERTISE_HOST": "ADVERTISE_HOST",
    "LLMAPP_GATEWAY_PORT": "GATEWAY_PORT",
    "LLMAPP_GATEWAY_URL": "GATEWAY_URL",
    "LLMAPP_SERVER_PORTS": "SERVER_PORTS",
    "LLMAPP_ENGINES_DIR": "ENGINES_DIR",
    "LLMAPP_DEPLOY_TIMEOUT_S": "DEPLOY_TIMEOUT_S",
    "LLMAPP_STOP_GRACE_S": "STOP_GRACE_S",
    "LLMAPP_RECONCILE_INTERVAL_S": "RECONCILE_INTERVAL_S",
    "LLMAPP_MAX_REQUEST_MB": "MAX_REQUEST_MB",
    "LLMAPP_METRICS_FLUSH_S": "METRICS_FLUSH_S",
    "LLMAPP_METRICS_TOKEN": "METRICS_TOKEN",
    "LLMAPP_LOG_LINES": "LOG_LINES",
    "LLMAPP_LOG_DAYS": "LOG_DAYS",
    "LLMAPP_LOG_HEARTBEAT_S": "LOG_HEARTBEAT_S",
    "LLMAPP_LOG_TRIM_INTERVAL_S": "LOG_TRIM_INTERVAL_S",
    "LLMAPP_SERVER_ENV_ALLOW": "SERVER_ENV_ALLOW",
    "LLMAPP_SERVER_USER": "SERVER_USER",
    "LLMAPP_SERVER_UID_BASE": "SERVER_UID_BASE",
    "LLMAPP_WARM_START": "WARM_START",
    "LLMAPP_FORK_SERVER_SOCKET": "FORK_SERVER_SOCKET",
    "LLMAPP_WEBHOOK_ALLOW": "WEBHOOK_ALLOWED_DESTINATIONS",
    "LLMAPP_SERVER_MAX_HEADER_KB": "SERVER_MAX_HEADER_KB",
    "LLMAPP_SERVER_HEADER_TIMEOUT_S": "SERVER_HEADER_TIMEOUT_S",
    "LLMAPP_SERVER_KEEP_ALIVE_S": "SERVER_KEEP_ALIVE_S",
    "LLMAPP_SERVER_MAX_CONNECTIONS": "SERVER_MAX_CONNECTIONS",
    "LLMAPP_QUOTAS_WITHOUT_REDIS": "QUOTAS_WITHOUT_REDIS",
    "LLMAPP_AUDIT_RETENTION_DAYS": "AUDIT_RETENTION_DAYS",
    "LLMAPP_HOST_HEARTBEAT_S": "HOST_HEARTBEAT_S",
    "LLMAPP_HOST_DOWN_AFTER_S": "HOST_DOWN_AFTER_S",
}

REDIS_URL_FILE = "redis.url"  # where `python app.py` publishes its embedded Redis for the CLI and workers


def _truthy(value) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def load(instance_path: str, overrides: dict | None = None) -> dict:
    """Return the configuration: defaults, then the environment, then ``overrides``."""
    config = dict(DEFAULTS)
    for variable, key in ENVIRONMENT.items():
        if os.environ.get(variable):
            config[key] = os.environ[variable]
    config.update(overrides or {})

    instance = Path(instance_path)
    _private_folder(instance)
    config.setdefault("SQLALCHEMY_DATABASE_URI", f"sqlite:///{instance / 'llmapp.db'}")
    config["SQLALCHEMY_DATABASE_URI"] = _normalise_database_url(config["SQLALCHEMY_DATABASE_URI"])
    if not config.get("REDIS_URL") and (instance / REDIS_URL_FILE).exists():
        config["REDIS_URL"] = (instance / REDIS_URL_FILE).read_text().strip()
    config["DEMO"] = _truthy(config["DEMO"])
    config["WARM_START"] = _truthy(config["WARM_START"])
    for key in (
        "DEPLOY_TIMEOUT_S", "STOP_GRACE_S", "RECONCILE_INTERVAL_S", "MAX_REQUEST_MB", "METRICS_FLUSH_S",
        "LOG_HEARTBEAT_S", "LOG_STREAM_BLOCK_S", "SERVER_HEADER_TIMEOUT_S", "SERVER_KEEP_ALIVE_S",
        "LOG_TRIM_INTERVAL_S", "HOST_HEARTBEAT_S", "HOST_DOWN_AFTER_S",
    ):  # fmt: skip
        config[key] = float(config[key])
    for key in (
        "LOG_LINES", "LOG_DAYS", "SERVER_MAX_HEADER_KB", "SERVER_MAX_CONNECTIONS", "TRUSTED_PROXIES", "SERVER_UID_BASE",
        "GATEWAY_PORT", "AUDIT_RETENTION_DAYS",
    ):  # fmt: skip
        config[key] = int(config[key])
    if config["AUDIT_RETENTION_DAYS"] < 0:
        raise RuntimeError("LLMAPP_AUDIT_RETENTION_DAYS: a number of days, or 0 to keep every entry.")
    if config["QUOTAS_WITHOUT_REDIS"] not in ("serve", "refuse"):
        raise RuntimeError(f"LLMAPP_QUOTAS_WITHOUT_REDIS={config['QUOTAS_WITHOUT_REDIS']!r}: say serve or refuse.")
    if isinstance(config["SERVER_ENV_ALLOW"], str):
        config["SERVER_ENV_ALLOW"] = [n.strip() for n in config["SERVER_ENV_ALLOW"].split(",") if n.strip()]
    config["SERVER_PORTS"] = _port_range(config["SERVER_PORTS"])
    if config["ACCELERATOR_MEMORY_GB"] not in (None, ""):
        config["ACCELERATOR_MEMORY_GB"] = float(config["ACCELERATOR_MEMORY_GB"])
    else:
        config["ACCELERATOR_MEMORY_GB"] = None

    if not config.get("SECRET_KEY"):
        if config["LLMAPP_ENV"] == PRODUCTION:
            raise RuntimeError(
                "SECRET_KEY is not set. Outside development llmapp refuses to start without it: "
                "set SECRET_KEY to a long random string (e.g. python -c 'import secrets; "
                "print(secrets.token_hex(32))')."
            )
        config["SECRET_KEY"] = _instance_secret_key(instance)
    config["SESSION_COOKIE_SECURE"] = config.get(
        "SESSION_COOKIE_SECURE",
        config["LLMAPP_ENV"] == PRODUCTION and not _truthy(os.environ.get("LLMAPP_INSECURE_COOKIES")),
    )
    # The remember-me cookie opens a login as the session cookie does: sent over HTTPS only, likewise.
    config.setdefault("REMEMBER_COOKIE_SECURE", config["SESSION_COOKIE_SECURE"])
    return config


def _port_range(value) -> range:
    if isinstance(value, range):
        return value
    try:
        low, _, high = str(value).partition("-")
        ports = range(int(low), int(high or low) + 1)
    except ValueError:
        ports = range(0)
    if not ports or ports.start < 1024 or ports.stop > 65536:
        raise RuntimeError(f"LLMAPP_SERVER_PORTS={value!r} is not a port range such as 18000-18999 (ports 1024-65535).")
    return ports


def _normalise_database_url(url: str) -> str:
    # Plain postgresql:// URLs would pick psycopg2; we ship psycopg 3.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _private_folder(instance: Path) -> None:
    """instance/ holds the SQLite database, the embedded Redis's data and the servers' specs: nobody but
    the platform's own account gets into it (app servers run as another account)."""
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = instance.stat().st_mode
    if mode & 0o077 and instance.stat().st_uid == os.geteuid():
        instance.chmod(mode & ~0o077)


def _instance_secret_key(instance: Path) -> str:
    """Development only: a random key kept under instance/, so sessions and stored secrets
    survive restarts and the `flask` CLI decrypts what `python app.py` encrypted."""
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()
