"""Every Redis key the platform web, the workers and the app servers share, spelled once.

Plain functions of ids, importable without Flask (the app servers use them too).
"""

PREFIX = "llmapp"


def logs(application_id) -> str:
    """The application's log: a bounded Redis Stream of records."""
    return f"{PREFIX}:logs:{application_id}"


def api_keys(application_id) -> str:
    """Hash of the application's active API keys: SHA-256 digest → "id:label" or "id@expiry:label"."""
    return f"{PREFIX}:keys:{application_id}"


def key_routes() -> str:
    """Hash of every published key's SHA-256 digest → the id of the application it belongs to: where
    the gateway sends a key's requests (the application's own hash above stays the authority)."""
    return f"{PREFIX}:key-routes"


def routes() -> str:
    """Hash of application id → its route as JSON (llmapp/gateway/table.py reads it): name, owner,
    status, release and replicas. The gateway's whole routing table."""
    return f"{PREFIX}:routes"


def routes_changed() -> str:
    """Pub/sub channel: an application id whose route changed (the gateway reloads it at once)."""
    return f"{PREFIX}:routes-changed"


def api_keys_used(application_id) -> str:
    """Hash of key id → last time the app server saw it (unix seconds)."""
    return f"{PREFIX}:keys-used:{application_id}"


def server(application_id) -> str:
    """Where the application's running server answers (host, port, pid, deploy, config), with a TTL."""
    return f"{PREFIX}:servers:{application_id}"


def health_misses(application_id) -> str:
    return f"{PREFIX}:health-misses:{application_id}"


def lock(name: str, application_id) -> str:
    """A job's lock on an application (name: deploy or stop)."""
    return f"{PREFIX}:{name}-lock:{application_id}"


def reconcile_queued(host: str) -> str:
    """Set while a reconcile of ``host`` waits in its queue, so at most one waits at a time."""
    return f"{PREFIX}:reconcile-queued:{host}"


def reconcile_lock(host: str) -> str:
    """Held by the one reconcile of ``host`` that runs."""
    return f"{PREFIX}:reconcile-lock:{host}"


def metrics(application_id, resolution: str, start: int) -> str:
    """One time bucket of the application's request metrics (a hash; see runtime/metrics.py)."""
    return f"{PREFIX}:metrics:{application_id}:{resolution}:{start}"


def metrics_pattern(application_id) -> str:
    """Every metrics bucket of the application (for SCAN, when it is deleted)."""
    return f"{PREFIX}:metrics:{application_id}:*"


def metrics_overview(minute: int) -> str:
    """Requests and errors of every application in one minute: the App Center's overview."""
    return f"{PREFIX}:metrics-overview:{minute}"


def trim_logs_queued() -> str:
    """Set while a trim of every application's log waits in the queue."""
    return f"{PREFIX}:trim-logs-queued"


def playground(application_id, user_id, what: str) -> str:
    """A user's playground with an application: its "key" (encrypted), "history", or "turn:<id>"."""
    return f"{PREFIX}:playground:{application_id}:{user_id}:{what}"


def playground_pattern(application_id) -> str:
    """Every user's playground with the application (for SCAN, when it is deleted)."""
    return f"{PREFIX}:playground:{application_id}:*"


def application_keys(application_id) -> tuple[str, ...]:
    """What an application leaves in Redis: deleted with it."""
    return (
        logs(application_id),
        api_keys(application_id),
        api_keys_used(application_id),
        server(application_id),
        health_misses(application_id),
        plugin_chain(application_id),
    )


def plugin_chain(application_id) -> str:
    """The application's plugin chain as its server runs it: a hash of "version" and "body" (encrypted)."""
    return f"{PREFIX}:plugin-chain:{application_id}"


def quota(scope: str, scope_id, kind: str) -> str:
    """A limit's state (scope: key, application or user; kind: rpm, tpm, day or month): a token bucket's
    hash for a rate, the prefix of one counter per day or month for a budget (runtime/quotas.py)."""
    return f"{PREFIX}:quota:{scope}:{scope_id}:{kind}"


def usage() -> str:
    """Stream of every served request's usage (application, key, owner, day, tokens), appended by the
    app servers with their quota's settlement and moved into the database by the platform (services/usage.py)."""
    return f"{PREFIX}:usage"


def usage_lock() -> str:
    return f"{PREFIX}:usage-lock"


def host(name: str) -> str:
    """A host's announcement (services/hosts.py): JSON, with a day's TTL, renewed every few seconds."""
    return f"{PREFIX}:host:{name}"


def hosts() -> str:
    """The set of the names of hosts that announced themselves."""
    return f"{PREFIX}:hosts"


def recover_queued() -> str:
    """Set while a recovery of down hosts' replicas waits in the queue, so at most one waits."""
    return f"{PREFIX}:recover-queued"


def recover_lock() -> str:
    return f"{PREFIX}:recover-lock"
