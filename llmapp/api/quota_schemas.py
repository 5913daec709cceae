"""The API's shapes for keys, limits and usage (llmapp/api/keys.py, llmapp/api/quotas.py); the rules are
the services' (services/quotas.py, services/usage.py), written here for the document only."""

from pydantic import BaseModel, Field

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
    user_id: int | None = Field(None, description="Admins: one person's applications only.")


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
