"""What the OpenAPI document says besides the shapes spectree writes from the routes' models: the rules
every operation shares, stated once here, so that each resource added later has them too.

- A string never holds a NUL (services.NO_NUL_PATTERN): the API refuses one anywhere, as the forms do.
- A request body whose fields are all optional may be left out (it reads as ``{}``).
- Every error answer is a problem document, and every operation may answer 414 (a request line too
  long for the web server, which answers before the API does: gunicorn.conf.py); every POST, PUT or
  PATCH 400 and 415 (a body sent that is not a JSON object), even one that reads no body.
- Links: each create leads to what hangs on what it created (its read, change and delete, its
  sub-resources), with the created id from the answer, so that a reader, and a fuzzer's stateful phase,
  can walk the API.
"""

import re

from ..services import NO_NUL_PATTERN

PARAMETER = re.compile(r"\{(\w+)\}")
LINK_NAME = re.compile(r"[^A-Za-z0-9._-]+")  # a link's name: a component's name (OpenAPI)


def refine(document: dict, problem_answer: dict) -> dict:
    """``document`` with the shared rules applied (in place; returned for convenience);
    ``problem_answer``: a response whose body is a problem document."""
    schemas = document["components"]["schemas"]
    for name in _read_by_requests(document):  # what the API answers may echo a NUL back (an error's field)
        _no_nul(schemas[name])
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                _no_nul(parameter.get("schema", {}))
            _optional_body(operation, document["components"]["schemas"])
            operation["responses"].setdefault("414", {"description": "URI Too Long", **problem_answer})
        for method in operations.keys() & {"post", "put", "patch"}:  # any body sent is read (auth.py)
            answers = operations[method]["responses"]
            answers.setdefault("400", {"description": "Bad Request", **problem_answer})
            answers.setdefault("415", {"description": "Unsupported Media Type", **problem_answer})
    _links(document)
    return document


def _refs(node, found: set[str]) -> set[str]:
    """The component schemas ``node`` refers to, and those they refer to (their names)."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"].rsplit("/", 1)[-1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _refs(item, found)
    return found


def _read_by_requests(document: dict) -> set[str]:
    """The component schemas request bodies use, directly or through others."""
    names = _refs([op.get("requestBody", {}) for ops in document["paths"].values() for op in ops.values()], set())
    while True:
        more = _refs([document["components"]["schemas"][name] for name in names], set()) - names
        if not more:
            return names
        names |= more


def _no_nul(schema) -> None:
    """Every string of ``schema`` (a JSON Schema, walked whole) without a NUL; every free object's keys too."""
    if isinstance(schema, list):
        for item in schema:
            _no_nul(item)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" and "enum" not in schema and "const" not in schema and "format" not in schema:
        if "pattern" not in schema:
            schema["pattern"] = NO_NUL_PATTERN
        elif schema["pattern"] != NO_NUL_PATTERN:  # one pattern per schema: the other joins as allOf
            schema.setdefault("allOf", []).append({"pattern": NO_NUL_PATTERN})
    if schema.get("type") == "object" and "properties" not in schema:
        schema.setdefault("propertyNames", {"pattern": NO_NUL_PATTERN})
    for key, value in schema.items():
        if key not in ("enum", "const", "default", "examples", "example"):
            _no_nul(value)


def _body_schema(operation: dict, schemas: dict) -> dict | None:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = content.get("schema", {}).get("$ref", "")
    return schemas.get(ref.rsplit("/", 1)[-1]) if ref else None


def _optional_body(operation: dict, schemas: dict) -> None:
    """A body that requires nothing may be left out: the API reads no body as ``{}``."""
    body = _body_schema(operation, schemas)
    if body is not None and not body.get("required"):
        operation["requestBody"]["required"] = False


def _links(document: dict) -> None:
    """From each POST that creates (201), a link to every operation on the paths below what it created.

    The new resource's parameter (the first of the path below the create's own) is its id from the answer
    (``$response.body#/id``), or, when the answer is a collection (a plugin attached to a chain), the
    field of the same name in the request; the create's own path parameters pass on from its request.
    """
    paths = document["paths"]
    for path, operations in paths.items():
        create = operations.get("post")
        if create is None or "201" not in create.get("responses", {}):
            continue
        answer_ref = create["responses"]["201"].get("content", {}).get("application/json", {}).get("schema", {})
        answer = document["components"]["schemas"].get(answer_ref.get("$ref", "").rsplit("/", 1)[-1], {})
        body = _body_schema(create, document["components"]["schemas"]) or {}
        links = {}
        for target, target_operations in paths.items():
            if not target.startswith(path + "/{") or target == path:
                continue
            new = PARAMETER.findall(target[len(path) :])[0]
            if "id" in answer.get("properties", {}):
                source = "$response.body#/id"
            elif new in body.get("properties", {}):
                source = f"$request.body#/{new}"
            else:
                continue
            parameters = {name: f"$request.path.{name}" for name in PARAMETER.findall(path)}
            parameters[new] = source
            if PARAMETER.findall(target) != [*PARAMETER.findall(path), new]:
                continue  # it needs more than the create gives (a key's own id)
            for method, operation in target_operations.items():
                name = LINK_NAME.sub("_", f"{method}{target[len(path) :]}").strip("_")  # "get_plugin_id"
                links[name] = {"operationId": operation["operationId"], "parameters": parameters}
        if links:
            create["responses"]["201"]["links"] = links
