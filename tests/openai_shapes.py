"""The shapes OpenAI's published OpenAPI document (github.com/openai/openai-openapi, openapi.yaml) gives
the objects our endpoints return: its required fields, types and enumerations, written out as JSON
Schema for the tests. Fields it makes optional are left open."""

import jsonschema

NULLABLE_STRING = {"type": ["string", "null"]}
FINISH_REASONS = ["stop", "length", "tool_calls", "content_filter", "function_call"]

USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
TOP_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {
        "token": {"type": "string"},
        "logprob": {"type": "number"},
        "bytes": {"type": ["array", "null"], "items": {"type": "integer"}},
    },
}
TOKEN_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes", "top_logprobs"],
    "properties": {**TOP_LOGPROB["properties"], "top_logprobs": {"type": "array", "items": TOP_LOGPROB}},
}
CHAT_LOGPROBS = {
    "type": ["object", "null"],
    "required": ["content", "refusal"],
    "properties": {
        "content": {"type": ["array", "null"], "items": TOKEN_LOGPROB},
        "refusal": {"type": ["array", "null"], "items": TOKEN_LOGPROB},
    },
}
COMPLETION_LOGPROBS = {
    "type": ["object", "null"],
    "properties": {
        "text_offset": {"type": "array", "items": {"type": "integer"}},
        "token_logprobs": {"type": "array", "items": {"type": "number"}},
        "tokens": {"type": "array", "items": {"type": "string"}},
        "top_logprobs": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}},
    },
}


def _envelope(obj: str, choice: dict) -> dict:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": obj},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": USAGE,
        },
    }


CHAT_COMPLETION = _envelope(
    "chat.completion",
    {
        "type": "object",
        "required": ["finish_reason", "index", "message", "logprobs"],
        "properties": {
            "finish_reason": {"enum": FINISH_REASONS},
            "index": {"type": "integer"},
            "message": {
                "type": "object",
                "required": ["role", "content", "refusal"],
                "properties": {"role": {"const": "assistant"}, "content": NULLABLE_STRING, "refusal": NULLABLE_STRING},
            },
            "logprobs": CHAT_LOGPROBS,
        },
    },
)
CHAT_COMPLETION_CHUNK = _envelope(
    "chat.completion.chunk",
    {
        "type": "object",
        "required": ["delta", "finish_reason", "index"],
        "properties": {
            "delta": {
                "type": "object",
                "properties": {
                    "content": NULLABLE_STRING,
                    "role": {"enum": ["developer", "system", "user", "assistant", "tool"]},
                },
            },
            "finish_reason": {"enum": [*FINISH_REASONS, None]},
            "index": {"type": "integer"},
            "logprobs": CHAT_LOGPROBS,
        },
    },
)
# Completions: "both the streamed and non-streamed response objects share the same shape".
TEXT_COMPLETION = _envelope(
    "text_completion",
    {
        "type": "object",
        "required": ["finish_reason", "index", "logprobs", "text"],
        "properties": {
            "finish_reason": {"enum": ["stop", "length", "content_filter", None]},
            "index": {"type": "integer"},
            "logprobs": COMPLETION_LOGPROBS,
            "text": {"type": "string"},
        },
    },
)
MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"}},
}
MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL}},
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message", "param", "code"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "param": NULLABLE_STRING,
                "code": NULLABLE_STRING,
            },
        }
    },
}


def check(instance, schema) -> None:
    """:raise jsonschema.ValidationError: ``instance`` is not of the shape."""
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)
