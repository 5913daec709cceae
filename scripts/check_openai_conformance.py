"""Check a running llmapp endpoint against OpenAI's published OpenAPI document.

    .venv/bin/python scripts/check_openai_conformance.py --spec openapi.json \\
        --url http://127.0.0.1:PORT/v1 --key llm-… --model NAME

The document (openapi.json from github.com/openai/openai-openapi) is not shipped here: download it
yourself. Each answer is validated with jsonschema against the document's own component schema
(`nullable: true`, an OpenAPI 3.0 word the document still uses, is read as "or null").
The test suite checks the same shapes from a hand-written extract (tests/openai_shapes.py).
"""

import argparse
import copy
import json
import sys

import httpx
import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT202012


def _nullable(schema):
    if isinstance(schema, dict):
        schema = {k: _nullable(v) for k, v in schema.items()}
        if schema.pop("nullable", False):
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if isinstance(schema, list):
        return [_nullable(v) for v in schema]
    return schema


def validator(document: dict, name: str):
    root = _nullable(copy.deepcopy(document))
    registry = Registry().with_resource("urn:openai", DRAFT202012.create_resource(root))
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    with open(args.spec) as f:
        document = json.load(f)
    headers = {"Authorization": f"Bearer {args.key}"}
    chat = {"model": args.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
    checks = [
        ("GET /models", "ListModelsResponse", lambda: httpx.get(f"{args.url}/models", headers=headers)),
        ("GET /models/{model}", "Model", lambda: httpx.get(f"{args.url}/models/{args.model}", headers=headers)),
        (
            "chat",
            "CreateChatCompletionResponse",
            lambda: httpx.post(f"{args.url}/chat/completions", json=chat, headers=headers),
        ),
        (
            "chat with logprobs",
            "CreateChatCompletionResponse",
            lambda: httpx.post(
                f"{args.url}/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 2}, headers=headers
            ),
        ),
        (
            "completion with logprobs",
            "CreateCompletionResponse",
            lambda: httpx.post(
                f"{args.url}/completions",
                json={"model": args.model, "prompt": "hello", "max_tokens": 5, "logprobs": 2},
                headers=headers,
            ),
        ),
        ("error: unknown model", "ErrorResponse", lambda: httpx.get(f"{args.url}/models/nope", headers=headers)),
        (
            "error: bad key",
            "ErrorResponse",
            lambda: httpx.get(f"{args.url}/models", headers={"Authorization": "Bearer x"}),
        ),
    ]
    failures = 0
    for label, name, call in checks:
        errors = list(validator(document, name).iter_errors(call().json()))
        failures += bool(errors)
        print(f"{'ok  ' if not errors else 'FAIL'} {label} against {name}")
        for error in errors[:5]:
            print(f"     {error.json_path}: {error.message[:200]}")
    with httpx.stream("POST", f"{args.url}/chat/completions", json={**chat, "stream": True}, headers=headers) as stream:
        chunks = [line[6:] for line in stream.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    check = validator(document, "CreateChatCompletionStreamResponse")
    bad = [e for chunk in chunks for e in check.iter_errors(json.loads(chunk))]
    failures += bool(bad)
    print(
        f"{'ok  ' if not bad else 'FAIL'} chat stream: {len(chunks)} chunks against CreateChatCompletionStreamResponse"
    )
    for error in bad[:5]:
        print(f"     {error.json_path}: {error.message[:200]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
