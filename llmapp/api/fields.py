"""What the API's shapes (llmapp/api/schemas.py) are built from: types that read JSON as the services
mean it, and the JSON Schema the document adds to a body."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _utc(value):
    """The database keeps UTC without a zone; the API says so (RFC 3339 needs the offset)."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


UtcDateTime = Annotated[datetime, BeforeValidator(_utc)]


def _whole(value):
    """JSON Schema's integers include 6.0 (a number without a fraction): read it as 6. A number with a
    fraction stays what it is, and is refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole)]  # an integer field of a body


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def requiring(*fields: str, also: list[dict] = ()):
    """A body's JSON Schema, for the document: ``fields`` required and never null, as its service requires
    them (the model itself keeps them optional, so that a missing one gets the service's own message
    at its field); ``also``: conditions the document adds (allOf), e.g. what each engine requires."""

    def extra(schema: dict) -> None:
        schema["required"] = sorted(set(schema.get("required", ())) | set(fields))
        for name in fields:
            field = schema["properties"][name]
            kinds = [kind for kind in field.pop("anyOf", ()) if kind.get("type") != "null"]
            if kinds:
                field.update(kinds[0] if len(kinds) == 1 else {"anyOf": kinds})
            field.pop("default", None)
        if also:
            schema["allOf"] = list(also)

    return ConfigDict(json_schema_extra=extra)


def when(field: str, value: str, then: dict) -> dict:
    """A JSON Schema condition: if ``field`` is ``value``, the body also matches ``then``."""
    return {"if": {"properties": {field: {"const": value}}, "required": [field]}, "then": then}
