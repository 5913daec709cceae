"""The API's shapes for keys, limits and usage (llmapp/api/keys.py, llmapp/api/quotas.py); the rules are
the services' (services/quotas.py, services/usage.py), written here for the document only."""

from pydantic import BaseModel, Field

from ..models import MAX_ID
from ..services import api_keys, quotas, usage
from .fields import Strict, UtcDateTime, Whole


def _limit(kind: str):
    extra = {"minimum": 0, "maximum": quotas.MAX_LIMIT, "description": f"{quotas.LABELS[kind]}; 0 or null: no limit."}
    return Field(None, json_schema_extra=extra)


class Limits(Strict):
    """Limits of a key, an application or a person; in a change, a limit left out stays as it is."""

    rpm: Whole | None = _limit("rpm")
    tpm: Whole | None = _limit("tpm")
    day: Whole | None = _limit("day")
    month: Whole | None = _limit("month")


class LimitsOut(BaseModel):
    rpm: int | None = None
    tpm: int | None = None
    day: int | None = None
    month: int | None = None


class KeyIn(Strict):
    label: str = Field(
        "", description=f"A name for the key; the service keeps its first {api_keys.MAX_LABEL} characters."
    )
    limits: Limits | None = None


class KeyOut(BaseModel):
    id: int
    label: str
    prefix: str
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None
    revoked_at: UtcDateTime | None
    limits: LimitsOut


class NewKey(KeyOut):
    key: str = Field(description="The key itself: shown once, never stored.")
    gateway: str = Field(
        description="The platform gateway's base URL (ends in /v1): call it with `model` set to the application's name."
    )


class KeyList(BaseModel):
    items: list[KeyOut]


class UsageQuery(BaseModel):
    days: int = Field(usage.DEFAULT_DAYS, ge=1, le=usage.MAX_DAYS, description="The last N days, today (UTC) included.")
    user_id: int | None = Field(None, ge=1, le=MAX_ID, description="Admins: one person's applications only.")


class UsageRow(BaseModel):
    day: str
    application_id: str
    application: str
    key_id: int
    key: str
    owner: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int


class UsageTotals(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int


class UsageReport(BaseModel):
    since: str
    until: str
    totals: UsageTotals
    rows: list[UsageRow]


class AuditQuery(BaseModel):
    actor: str = Field("", max_length=200, description="Part of who acted: an e-mail, a token's name.")
    object_type: str = Field("", max_length=32, description="application, key, plugin, model, user, token, engine…")
    object_id: str = Field("", max_length=64)
    action: str = Field("", max_length=64, description="An action, or its start: `application.` for all of them.")
    days: int | None = Field(None, ge=1, le=3660, description="Only the last N days.")
    before_id: int | None = Field(None, ge=1, le=MAX_ID, description="The page after this entry (the last id you got).")
    limit: int = Field(100, ge=1, le=1000)


class AuditEntryOut(BaseModel):
    id: int
    at: str
    actor: str
    actor_id: int | None
    address: str
    action: str
    object_type: str
    object_id: str
    object_name: str
    changes: dict[str, list] = Field(description='Each changed field: [before, after]; a secret as "changed".')


class AuditPage(BaseModel):
    items: list[AuditEntryOut]


class HostOut(BaseModel):
    name: str
    address: str
    up: bool
    seconds_since: float = Field(description="Since its last announcement (its worker's heartbeat).")
    cpus: int
    memory_bytes: int
    memory_available_bytes: int
    gpus: list[dict]
    engines: list[str] = Field(description="The managed engines installed there.")
    replicas: list[dict] = Field(description="Each replica it runs: application, release, status, port.")


class HostList(BaseModel):
    items: list[HostOut]
