"""Database models. Lifecycle rules live in services/lifecycle.py, not here."""

import uuid
from datetime import UTC, date, datetime

from flask_login import UserMixin
from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, Uuid, func
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database: a larger number names nothing (and would overflow)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, always UTC


class Limited:
    """Quotas of a key, an application or a user (across their applications): null is no limit.
    The app servers enforce them (llmapp/runtime/quotas.py); services/quotas.py sets them."""

    limit_rpm: Mapped[int | None] = mapped_column(BigInteger)  # requests per minute
    limit_tpm: Mapped[int | None] = mapped_column(BigInteger)  # tokens per minute
    limit_daily_tokens: Mapped[int | None] = mapped_column(BigInteger)
    limit_monthly_tokens: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def limits(self) -> dict[str, int]:
        """The limits set, by their short names (rpm, tpm, day, month)."""
        values = {
            "rpm": self.limit_rpm,
            "tpm": self.limit_tpm,
            "day": self.limit_daily_tokens,
            "month": self.limit_monthly_tokens,
        }
        return {kind: value for kind, value in values.items() if value}


class User(Limited, UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]  # a disabled user can't log in; their logins ended when disabled
    locale: Mapped[str | None] = mapped_column(String(16))  # the pages' language they chose; None: the browser's

    @property
    def is_active(self) -> bool:
        return self.disabled_at is None

    # The login this request came with (services/users.py): Flask-Login keeps "id:token" in the
    # session and the remember-me cookie, and a token whose login has ended lets nobody in.
    session_token = None  # str, set per request
    token_name = None  # the name of the personal access token an API request came with

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def __repr__(self) -> str:
        return f"<User {self.email}>"


class LoginSession(db.Model):
    """One login (a browser): it lasts until its user logs out. Only the token's SHA-256 is stored."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegistryModel(db.Model):
    """A model of the registry (the seed's "training center"). Not named `Model`: that is db.Model."""

    __tablename__ = "registry_models"

    PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    family: Mapped[str] = mapped_column(String(50), default="")
    parameters_billions: Mapped[float]
    precision: Mapped[str] = mapped_column(String(8))
    context_length: Mapped[int]
    engine: Mapped[str] = mapped_column(String(20))  # a name of the engine table (llmapp/engines)
    # The engine columns: what each holds for each engine is that engine's (EngineKind.fields).
    source: Mapped[str] = mapped_column(String(500), default="")
    base_url: Mapped[str | None] = mapped_column(String(500))
    upstream_model: Mapped[str | None] = mapped_column(String(200))
    api_key_env: Mapped[str] = mapped_column(String(128), default="OPENAI_API_KEY", server_default="OPENAI_API_KEY")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<RegistryModel {self.name}>"


class Application(Limited, db.Model):
    __tablename__ = "applications"
    __table_args__ = (
        UniqueConstraint("created_by_id", "name", name="uq_applications_owner_name"),
        # The list orders by (updated_at, id) descending, per owner (members) or overall (admins):
        # these indexes serve that order directly, so a page never sorts the whole table.
        Index("ix_applications_owner_updated", "created_by_id", "updated_at", "id"),
        Index("ix_applications_updated", "updated_at", "id"),
        Index("ix_applications_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="stopped")
    endpoint: Mapped[str | None] = mapped_column(String(500))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    resource_usage: Mapped[dict] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deployed_at: Mapped[datetime | None]
    # The current (or last) deploy or roll-out; its server processes are its replicas (Replica rows).
    deploy_id: Mapped[str | None] = mapped_column(String(32))
    deploy_phases: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    restarts: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    # The port its endpoint keeps across restarts and redeploys (while it is free on the host).
    port: Mapped[int | None]
    # The number of the release its replicas run (set when a deploy or a roll-out reaches running).
    deployed_release: Mapped[int | None]
    # While it runs: the release a rolling redeploy is bringing up beside it (None: none is).
    rolling_to: Mapped[int | None]
    # A canary: another release serving beside deployed_release, with this share (%) of the gateway's
    # requests. While the roll-out of a canary is under way, canary_percent is set and canary_release not.
    canary_release: Mapped[int | None]
    canary_percent: Mapped[int] = mapped_column(default=0, server_default="0")

    model: Mapped[RegistryModel] = relationship(lazy="raise")
    owner: Mapped[User] = relationship(lazy="raise")
    env_vars: Mapped[list["EnvVar"]] = relationship(
        back_populates="application",
        order_by="EnvVar.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    api_keys: Mapped[list["ApiKey"]] = relationship(
        back_populates="application",
        order_by="ApiKey.created_at",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    plugin_links: Mapped[list["ApplicationPlugin"]] = relationship(
        back_populates="application",
        order_by="ApplicationPlugin.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    replicas: Mapped[list["Replica"]] = relationship(
        back_populates="application",
        order_by="Replica.started_at",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    def __repr__(self) -> str:
        return f"<Application {self.name} {self.status}>"

    @property
    def serving_replicas(self) -> list["Replica"]:
        return [r for r in self.replicas if r.status == "ready"]

    # Where its first serving replica runs, for code that thinks of one server (read-only).
    @property
    def process_host(self) -> str | None:
        return self.serving_replicas[0].host if self.serving_replicas else None

    @property
    def process_pid(self) -> int | None:
        return self.serving_replicas[0].pid if self.serving_replicas else None

    @property
    def process_port(self) -> int | None:
        return self.serving_replicas[0].port if self.serving_replicas else None


class EnvVar(db.Model):
    """An environment variable of an application; a secret one holds only its ciphertext."""

    __tablename__ = "app_env_vars"
    __table_args__ = (UniqueConstraint("application_id", "name", name="uq_app_env_vars_app_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    application_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(default=0)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(Text, default="")  # plain text, or a Fernet token when is_secret
    is_secret: Mapped[bool] = mapped_column(default=False)

    application: Mapped[Application] = relationship(back_populates="env_vars")


class Plugin(db.Model):
    """A configured plugin of one of the types of llmapp/runtime/plugins (whose schema its config meets).

    Sharing: a member's plugins are theirs alone; an admin's plugin marked ``published`` is offered to
    everyone to attach (and changed only by admins).
    """

    __tablename__ = "plugins"
    __table_args__ = (UniqueConstraint("created_by_id", "name", name="uq_plugins_owner_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(32), server_default="system_prompt")
    version: Mapped[str] = mapped_column(String(32), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    enabled: Mapped[bool] = mapped_column(default=True)
    published: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    owner: Mapped[User | None] = relationship(lazy="joined")
    documents: Mapped[list["PluginDocument"]] = relationship(
        back_populates="plugin", order_by="PluginDocument.name", cascade="all, delete-orphan", passive_deletes=True
    )


class PluginDocument(db.Model):
    """A text or Markdown document of a knowledge-retrieval plugin, split and indexed by its servers."""

    __tablename__ = "plugin_documents"
    __table_args__ = (UniqueConstraint("plugin_id", "name", name="uq_plugin_documents_plugin_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    plugin_id: Mapped[int] = mapped_column(ForeignKey("plugins.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    size: Mapped[int]  # bytes, as uploaded
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    plugin: Mapped[Plugin] = relationship(back_populates="documents")


class ApplicationPlugin(db.Model):
    """A plugin attached to an application: its place in the pipeline, its config, on or off."""

    __tablename__ = "application_plugins"

    application_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True
    )
    plugin_id: Mapped[int] = mapped_column(ForeignKey("plugins.id", ondelete="RESTRICT"), primary_key=True)
    position: Mapped[int] = mapped_column(default=0)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)

    application: Mapped[Application] = relationship(back_populates="plugin_links")
    plugin: Mapped[Plugin] = relationship()


class AccessToken(db.Model):
    """A personal access token: a user's key to the platform's REST API (/api/v1), for scripts and CI.

    Only its SHA-256 is stored; the token is shown once. It acts as its user, with their rights, until
    it is revoked, expires, or the user is disabled.
    """

    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(24))  # the first characters, to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class Release(db.Model):
    """An application's serving setup as it was saved: numbered from 1, never changed afterwards.

    ``setup`` (llmapp/services/releases.py): the model, the configuration, the environment (a secret
    as its stored ciphertext and a keyed fingerprint, never in the clear) and the plugin chain with each
    plugin's settings.
    """

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("application_id", "number", name="uq_releases_application_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    application_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    note: Mapped[str] = mapped_column(String(200), default="")
    setup: Mapped[dict] = mapped_column(JSON, default=dict)
    served_at: Mapped[datetime | None]  # when it last began to serve (a rollback goes to the one before)

    author: Mapped[User | None] = relationship(lazy="joined")


class Replica(db.Model):
    """One server process of an application: the release it runs, where, and how it stands.

    ``status``: starting (not sent anything yet), ready (serving), draining (finishing what it has,
    sent nothing new, then stopped). A deploy or roll-out starts ``replicas`` of them; the reconcile
    replaces one that dies; a stop or the end of a roll-out drains and removes them.
    """

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    application_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), index=True)
    release: Mapped[int]
    deploy_id: Mapped[str] = mapped_column(String(32))  # the deploy or roll-out that started it
    status: Mapped[str] = mapped_column(String(16), default="starting")
    host: Mapped[str] = mapped_column(String(255), index=True)  # the host whose worker queue runs its jobs
    address: Mapped[str] = mapped_column(String(255), default="")  # the name clients and gateways reach it by
    pid: Mapped[int | None]
    port: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)

    application: Mapped[Application] = relationship(back_populates="replicas")

    def __repr__(self) -> str:
        return f"<Replica {self.id[:8]} release {self.release} {self.status} {self.host}:{self.port}>"


class ApiKey(Limited, db.Model):
    """A key to an application's endpoint. Only its SHA-256 is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    application_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # A key the platform makes for itself (the playground's, for one user) expires; a user's doesn't.
    purpose: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    expires_at: Mapped[datetime | None]

    application: Mapped[Application] = relationship(back_populates="api_keys")


# Names are unique whatever their case, as the services compare them: one rule, held by the database
# (two parallel creates of "Bot" and "bot" can't both pass the services' check and both be stored).
# These imply the case-sensitive constraints above, which stay (SQLite can't drop a table's constraint
# without rebuilding tables that others refer to).
Index("uq_registry_models_lower_name", func.lower(RegistryModel.name), unique=True)
Index("uq_applications_owner_lower_name", Application.created_by_id, func.lower(Application.name), unique=True)
Index("uq_plugins_owner_lower_name", Plugin.created_by_id, func.lower(Plugin.name), unique=True)


class UsageDay(db.Model):
    """A day's usage of one key of one application (services/usage.py adds the app servers' records).

    No foreign keys: usage outlives what it was about (a deleted application's stays on the Usage page),
    so names are kept as they were."""

    __tablename__ = "usage_days"
    __table_args__ = (
        UniqueConstraint("day", "application_id", "key_id", name="uq_usage_days_day_application_key"),
        Index("ix_usage_days_user_day", "user_id", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(index=True)
    application_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    application_name: Mapped[str] = mapped_column(String(100), default="")
    key_id: Mapped[int]  # 0: a request whose key is unknown
    key_label: Mapped[str] = mapped_column(String(100), default="")
    user_id: Mapped[int | None]  # the application's owner when it was used
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageCursor(db.Model):
    """How far into the usage stream the database has counted, moved in the same transaction as the counts
    (so each record counts once, whatever fails)."""

    __tablename__ = "usage_cursor"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_id: Mapped[str] = mapped_column(String(64), default="0-0")


class AuditEntry(db.Model):
    """One change by a person or a token (services/audit.py writes them; nothing edits one). No foreign
    keys: an entry outlives what it is about, and who made it."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_owner", "owner_id", "id"),
        Index("ix_audit_entries_object", "object_type", "object_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None]  # the user who acted (a token acts as its user); None: the operator
    actor: Mapped[str] = mapped_column(String(300))  # their e-mail, "token NAME (e-mail)", "operator (…)"
    address: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)  # "application.update", "key.create"…
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64), default="")
    object_name: Mapped[str] = mapped_column(String(200), default="")
    owner_id: Mapped[int | None]  # whose object it is: they may read the entry too
    changes: Mapped[dict] = mapped_column(JSON, default=dict)  # field → [before, after]; secrets "changed"
