"""The API's reference page in the UI: the OpenAPI document, read and rendered by Jinja (no JS)."""

from flask import Blueprint, render_template
from flask_babel import gettext as _
from flask_login import login_required

from .openapi import document

page_bp = Blueprint("api_page", __name__, url_prefix="/api")


def _resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def schema_name(ref: str) -> str:
    """spectree names schemas "Model.<hash>" and nested ones "Parent.<hash>.Model": the model's name."""
    parts = ref.rsplit("/", 1)[-1].split(".")
    return parts[-1] if len(parts) > 2 else parts[0]


def type_of(schema: dict, components: dict) -> str:
    """A schema in a few words: "integer", "string or null", "list of EnvVarIn"."""
    if "$ref" in schema:
        return schema_name(schema["$ref"])
    if "anyOf" in schema:
        options = [type_of(option, components) for option in schema["anyOf"]]
        said = options[0] if options else ""
        for option in options[1:]:
            said = _("%(first)s or %(second)s", first=said, second=option)
        return said
    if schema.get("type") == "array":
        return _("list of %(type)s", type=type_of(schema.get("items", {}), components))
    return schema.get("type") or _("any")


def constraints(schema: dict) -> str:
    words = []
    if "enum" in schema:
        words.append(_("one of %(values)s", values=", ".join(map(str, schema["enum"]))))
    if "minimum" in schema or "maximum" in schema:
        words.append(f"{schema.get('minimum', '…')}–{schema.get('maximum', '…')}")
    if "maxLength" in schema:
        words.append(_("at most %(count)s characters", count=schema["maxLength"]))
    if "maxItems" in schema:
        words.append(_("at most %(count)s items", count=schema["maxItems"]))
    if "default" in schema and schema["default"] is not None:
        words.append(_("default %(value)s", value=schema["default"]))
    return "; ".join(words)


def fields(schema: dict, components: dict) -> list[dict]:
    """The properties of an object schema, as rows (nested objects named by their type)."""
    schema = _resolve(schema, components)
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "type": type_of(spec, components),
            "required": name in required,
            "constraints": constraints(spec),
            "description": spec.get("description", ""),
        }
        for name, spec in schema.get("properties", {}).items()
    ]


@page_bp.get("/")
@login_required
def index():
    """Every operation of /api/v1, grouped by tag: path, what it does, its parameters, body and answers."""
    doc = document()
    components = doc["components"]["schemas"]
    groups: dict[str, list] = {}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            answers = []
            for code, answer in sorted(operation["responses"].items()):
                content = next(iter(answer.get("content", {}).values()), {})
                answers.append(
                    (code, answer.get("description", ""), type_of(content["schema"], components) if content else "")
                )
            groups.setdefault((operation.get("tags") or ["other"])[0], []).append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": operation.get("parameters", []),
                    "body": fields(body, components) if body else None,
                    "answers": answers,
                    "anchor": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
                }
            )
    bodies = {
        name.split(".")[-1]: fields({"$ref": f"#/components/schemas/{name}"}, components)
        for name in components
        if name.split(".")[-1]
        in ("ApplicationOut", "ModelOut", "Problem", "EnvVarIn", "KeyOut", "NewKey", "Transition")
    }
    return render_template(
        "api/index.html",
        groups=groups,
        info=doc["info"],
        version=doc["openapi"],
        bodies=bodies,
        type_of=type_of,
        constraints=constraints,
    )
