"""The engine table: an engine kind is one module and one entry, and every part of the platform that
deals with engines reads the table (the registry's checks and form, recommendations, the server's spec
and the server's main), so a kind added to it works end to end without another change."""

import pytest
import redis
import redis.asyncio
from starlette.testclient import TestClient

from conftest import APP_KEY, ROUTE_KEY
from llmapp import engines
from llmapp.engines.kind import EngineKind, RegistryField
from llmapp.extensions import db
from llmapp.models import Application
from llmapp.runtime import keys
from llmapp.runtime.__main__ import make_engine
from llmapp.runtime.engines import CompletionOutput, Engine, RequestOutput, one
from llmapp.runtime.server import build_app
from llmapp.services import OPERATOR, FieldErrors, applications, recommendations, registry, server_spec


class EchoEngine(Engine):
    """Says its prefix and the prompt back, word by word when streamed."""

    name = "echo"
    status = "ready"

    def __init__(self, prefix: str, served_name: str):
        super().__init__(served_name)
        self.prefix = prefix

    def _text(self, prepared) -> str:
        said = prepared.request.prompt or prepared.request.messages[-1]["content"]
        return f"{self.prefix} {said}"

    async def complete(self, prepared):
        return one(CompletionOutput(0, self._text(prepared), finish_reason="stop"), 1, 2)

    async def stream(self, prepared):
        for word in self._text(prepared).split(" "):
            yield RequestOutput([CompletionOutput(0, word + " ")])
        yield RequestOutput([CompletionOutput(0, finish_reason="stop")], 1, 2)


class EchoKind(EngineKind):
    """The whole of a new engine, as a module would hold it."""

    name = "echo"
    label = "says the prompt back"
    fields = (RegistryField("source", "echo: what it says first.", required="Say what the echo says first."),)

    def recommend(self, model, memory_bytes, cpu_cores=None):
        return recommendations.recommend_upstream(model.parameters_billions, model.context_length, "echo")

    def spec_options(self, model):
        return {"prefix": model.source}

    def build(self, spec, environ):
        return EchoEngine(spec.engine_options["prefix"], spec.app_name)


@pytest.fixture
def echo(monkeypatch):
    """The table with one more entry."""
    monkeypatch.setitem(engines.ENGINES, "echo", EchoKind())
    return engines.ENGINES["echo"]


def registry_values(**fields) -> dict:
    return {"name": "echo-1", "parameters_billions": 1, "context_length": 2048, "precision": "fp32", **fields}


def test_a_new_kind_is_checked_offered_and_recommended_through_the_table(app, echo):
    from llmapp.registry.forms import RegistryModelForm

    with app.app_context():
        with pytest.raises(FieldErrors) as missing:
            registry.check(registry_values(engine="echo", source=""))
        assert missing.value.errors == {"source": ["Say what the echo says first."]}
        values = registry.check(registry_values(engine="echo", source="hello", base_url="http://x/v1"))
        assert values["source"] == "hello" and values["base_url"] is None  # a column it does not read: reset
        with pytest.raises(FieldErrors) as unknown:
            registry.check(registry_values(engine="nope", source="x"))
        assert "echo" in unknown.value.errors["engine"][0]  # the choices are the table's
        with app.test_request_context():
            assert ("echo", "echo — says the prompt back") in RegistryModelForm().engine.choices
        assert "echo: what it says first." in engines.column_hints()["source"]
        model = registry.create_model(values, acting=OPERATOR)
        assert applications.recommendation_for(model).upstream == "echo"


def test_a_new_kind_is_built_and_served_from_its_spec(app, factory, member, echo, redis_url):
    model = factory.model(engine="echo", source="hello")
    application = factory.application(member, model, name="parrot")
    with app.app_context():
        spec = server_spec.spec_for(db.session.get(Application, application.id), 18000)
    assert spec.engine == "echo" and spec.engine_options == {"prefix": "hello"}
    engine = make_engine(spec)  # what the server's main does with the spec it is given
    assert isinstance(engine, EchoEngine)

    connection = redis.Redis.from_url(redis_url)
    keys.publish(connection, spec.app_id, {keys.digest("k"): (1, "test")}, application_key=APP_KEY, route_key=ROUTE_KEY)
    server = build_app(spec, engine, redis.asyncio.Redis.from_url(redis_url), chain_key=APP_KEY)
    headers = {"Authorization": "Bearer k"}
    with TestClient(server) as client:
        whole = client.post("/v1/completions", json={"model": "parrot", "prompt": "hi there"}, headers=headers)
        streamed = client.post(
            "/v1/chat/completions",
            json={"model": "parrot", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers=headers,
        )
    assert whole.status_code == 200 and whole.json()["choices"][0]["text"] == "hello hi there"
    assert whole.json()["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"content": "hello "' in streamed.text
