"""Plugin types: what each one does to a request, and the JSON Schema of its configuration.

The schemas are the one statement of each type's configuration: the platform validates a plugin's
configuration (and an application's override of it) against them with ``jsonschema``, and generates
the configuration form from them (``title``, ``description``, ``default``, ``enum``; ``x-widget:
textarea`` for long text; ``x-secret`` for a value stored encrypted and never shown again). The pure
logic of each type lives in its own module: system_prompt, content_filter, pii, retrieval, webhook;
rewrite.py holds what the output-side types share (masking and blocking across chunk borders).

The request pipeline's plugin stages (chain.py), the Plugins tab and the per-application chains
build on it (docs/ARCHITECTURE.md, "Plugins").
"""

from dataclasses import dataclass

from jsonschema import Draft202012Validator

from .content_filter import pattern_errors


def N_(text: str) -> str:
    """Marks a title or description for the pages' translation (extracted by `make messages`; the pages
    translate it when they show it). The app servers and the API's schemas keep the English."""
    return text


APPLY_TO = {
    "type": "string",
    "title": N_("Applies to"),
    "enum": ["input", "output", "both"],
    "default": "both",
    "description": N_("The request's messages, the model's reply, or both."),
}


@dataclass(frozen=True)
class PluginType:
    name: str
    title: str
    description: str
    schema: dict


def _schema(properties: dict, required: tuple = ()) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


TYPES = {
    t.name: t
    for t in (
        PluginType(
            "system_prompt",
            N_("System prompt / template"),
            N_("Adds a system message to every chat, and wraps the user's message in a template with variables."),
            _schema(
                {
                    "system_prompt": {
                        "type": "string",
                        "title": N_("System message"),
                        "maxLength": 20000,
                        "default": "",
                        "x-widget": "textarea",
                    },
                    "mode": {
                        "type": "string",
                        "title": N_("When the request has its own system message"),
                        "enum": ["prepend", "replace"],
                        "default": "prepend",
                    },
                    "template": {
                        "type": "string",
                        "title": N_("User message template"),
                        "description": N_(
                            "{input} is the user's message; {name} is a variable below. Empty: unchanged."
                        ),
                        "maxLength": 20000,
                        "default": "",
                        "x-widget": "textarea",
                    },
                    "variables": {
                        "type": "array",
                        "title": N_("Variables"),
                        "description": N_("One NAME=value per line."),
                        "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*=", "maxLength": 2000},
                        "maxItems": 50,
                        "default": [],
                    },
                }
            ),
        ),
        PluginType(
            "content_filter",
            N_("Content filter"),
            N_("Keyword and regular-expression rules on the input and/or the output: block or mask."),
            _schema(
                {
                    "keywords": {
                        "type": "array",
                        "title": N_("Keywords"),
                        "items": {"type": "string", "minLength": 1, "maxLength": 200},
                        "maxItems": 500,
                        "default": [],
                    },
                    "patterns": {
                        "type": "array",
                        "title": N_("Regular expressions"),
                        "description": N_("RE2 syntax (matched in linear time): no backreferences or lookaround."),
                        "items": {"type": "string", "minLength": 1, "maxLength": 500},
                        "maxItems": 100,
                        "default": [],
                    },
                    "case_sensitive": {"type": "boolean", "title": N_("Case sensitive"), "default": False},
                    "accents": {
                        "type": "string",
                        "title": N_("Accents"),
                        "enum": ["ignore", "match"],
                        "default": "ignore",
                        "description": N_(
                            "ignore: a keyword typed without accents also matches accented text "
                            "(password: pässwörd; but ban also blocks Vietnamese bạn). match: a letter's accents "
                            "count. A keyword typed with accents always matches only them."
                        ),
                    },
                    "apply_to": APPLY_TO,
                    "action": {
                        "type": "string",
                        "title": N_("Action"),
                        "enum": ["block", "mask"],
                        "default": "block",
                        "description": N_(
                            "Block: the input is refused (400) or the output ends (finish_reason "
                            "content_filter). Mask: each match is replaced."
                        ),
                    },
                    "mask": {"type": "string", "title": N_("Mask"), "default": "***", "maxLength": 50},
                    "max_match_chars": {
                        "type": "integer",
                        "title": N_("Longest pattern match (characters)"),
                        "description": N_(
                            "How much streamed text is held back so that a match split across chunks is still caught."
                        ),
                        "minimum": 1,
                        "maximum": 1000,
                        "default": 100,
                    },
                }
            ),
        ),
        PluginType(
            "pii_redaction",
            N_("PII redaction"),
            N_(
                "Masks e-mail addresses, phone numbers and ID numbers (the 18-digit resident ID, checksum "
                "verified) in the input and/or the output."
            ),
            _schema(
                {
                    "entities": {
                        "type": "array",
                        "title": N_("What to redact"),
                        "items": {"type": "string", "enum": ["email", "phone", "id_number"]},
                        "uniqueItems": True,
                        "default": ["email", "phone", "id_number"],
                    },
                    "apply_to": APPLY_TO,
                    "region": {
                        "type": "string",
                        "title": N_("Phone region"),
                        "description": N_("How numbers without a country code are read (ISO code, e.g. CN, US)."),
                        "pattern": "^[A-Za-z]{2}$",
                        "default": "CN",
                    },
                    "mask_style": {
                        "type": "string",
                        "title": N_("Mask"),
                        "enum": ["label", "partial"],
                        "default": "label",
                        "description": N_("label: [EMAIL], [PHONE], [ID]. partial: j***@example.com, *******5678."),
                    },
                }
            ),
        ),
        PluginType(
            "knowledge_retrieval",
            N_("Knowledge retrieval (RAG)"),
            N_("Adds the passages of its documents that best match the question (BM25) as context."),
            _schema(
                {
                    "top_k": {
                        "type": "integer",
                        "title": N_("Passages per request"),
                        "minimum": 1,
                        "maximum": 20,
                        "default": 3,
                    },
                    "passage_chars": {
                        "type": "integer",
                        "title": N_("Passage size (characters)"),
                        "minimum": 200,
                        "maximum": 4000,
                        "default": 800,
                    },
                    "template": {
                        "type": "string",
                        "title": N_("Context template"),
                        "description": N_("{passages} is replaced by the passages found."),
                        "default": "Answer from these passages when they help:\n\n{passages}",
                        "maxLength": 5000,
                        "x-widget": "textarea",
                    },
                }
            ),
        ),
        PluginType(
            "webhook_audit",
            N_("Webhook audit"),
            N_("POSTs a signed JSON summary of each completion to a URL, off the request path."),
            _schema(
                {
                    "url": {"type": "string", "title": N_("URL"), "pattern": "^https?://", "maxLength": 2000},
                    "secret": {
                        "type": "string",
                        "x-secret": True,  # stored encrypted, never shown again
                        "title": N_("Signing secret"),
                        "description": N_("Signs each body (HMAC-SHA256, X-LLMApp-Signature)."),
                        "minLength": 16,
                        "maxLength": 200,
                    },
                    "include_content": {
                        "type": "boolean",
                        "title": N_("Include the prompt and the reply"),
                        "default": False,
                    },
                    "timeout_s": {
                        "type": "number",
                        "title": N_("Timeout (s)"),
                        "minimum": 0.5,
                        "maximum": 30,
                        "default": 5,
                    },
                    "retries": {"type": "integer", "title": N_("Retries"), "minimum": 0, "maximum": 10, "default": 3},
                },
                required=("url", "secret"),
            ),
        ),
    )
}


def config_errors(type_name: str, config: dict) -> dict[str, list[str]]:
    """Per-field errors of a configuration ("" for errors about the whole of it); empty when valid."""
    plugin_type = TYPES.get(type_name)
    if plugin_type is None:
        return {"": [f"Unknown plugin type “{type_name}”."]}
    errors: dict[str, list[str]] = {}
    for error in sorted(Draft202012Validator(plugin_type.schema).iter_errors(config), key=lambda e: list(e.path)):
        name = str(error.path[0]) if error.path else ""
        if error.validator == "required":
            name = error.message.split("'")[1]
            message = "Required."
        elif error.validator == "additionalProperties":
            message = "Unknown settings: " + error.message.split("(")[1].rstrip(")")
        else:
            message = _message(error)
        errors.setdefault(name, []).append(message)
    if type_name == "content_filter" and isinstance(config.get("patterns"), list):
        bad = pattern_errors([p for p in config["patterns"] if isinstance(p, str)])
        if bad:
            errors.setdefault("patterns", []).extend(bad)
    return errors


def _message(error) -> str:
    """jsonschema's message, in the words a form shows."""
    limits = {
        "minimum": lambda e: f"At least {e.validator_value}.",
        "maximum": lambda e: f"At most {e.validator_value}.",
        "minLength": lambda e: f"At least {e.validator_value} characters.",
        "maxLength": lambda e: f"At most {e.validator_value} characters.",
        "maxItems": lambda e: f"At most {e.validator_value} entries.",
        "enum": lambda e: "Choose one of: " + ", ".join(map(str, e.validator_value)) + ".",
        "type": lambda e: f"Must be {'a' if e.validator_value != 'integer' else 'an'} {e.validator_value}.",
        "pattern": lambda e: {
            "^https?://": "Must start with http:// or https://.",
            "^[A-Za-z]{2}$": "A two-letter region code, e.g. CN.",
            "^[A-Za-z_][A-Za-z0-9_]*=": "Each line: NAME=value.",
        }.get(e.validator_value, f"Does not match {e.validator_value}."),
        "uniqueItems": lambda e: "Each entry once.",
    }
    return limits[error.validator](error) if error.validator in limits else error.message


def defaults(type_name: str) -> dict:
    """A new plugin's configuration: every setting that has a default."""
    properties = TYPES[type_name].schema["properties"]
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}


def secret_settings(type_name: str) -> list[str]:
    """The settings of a type whose values are secrets."""
    return [name for name, spec in TYPES[type_name].schema["properties"].items() if spec.get("x-secret")]
