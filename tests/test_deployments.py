"""Deploy for real: RQ workers (separate processes) start app servers (separate processes) that the
official `openai` client calls. Nothing here calls a job function directly or fakes an HTTP server."""

import httpx
import openai
import psutil
import pytest

from conftest import server_processes, wait_for
from llmapp.extensions import db
from llmapp.models import Application
from llmapp.runtime import logs
from llmapp.services import api_keys

HX = {"HX-Request": "true"}
CONFIG = {
    "max_concurrency": 8,
    "timeout_s": 30,
    "log_level": "INFO",
    "cache_size": 16,
    "batch_size": 4,
    "restart_policy": "on-failure",
    "max_restarts": 3,
}


def row(app, application_id) -> Application:
    with app.app_context():
        return db.session.get(Application, application_id)


def status(app, application_id) -> str:
    return row(app, application_id).status


def wait_status(app, application_id, wanted, timeout=90):
    wait_for(lambda: status(app, application_id) in wanted, timeout, 0.2, f"status in {wanted}")
    return row(app, application_id)


def new_key(app, application_id, label="test") -> str:
    with app.app_context():
        return api_keys.create_key(db.session.get(Application, application_id), label)[1]


def log_text(app, application_id) -> str:
    import redis

    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    return "\n".join(f"{line['level']} {line['message']}" for line in logs.tail(connection, application_id, 2000))


@pytest.fixture
def tiny(factory, tiny_model_dir):
    return factory.model(
        name="tiny-gpt2",
        family="gpt2",
        parameters_billions=0.0004,
        precision="fp32",
        context_length=8192,
        engine="transformers",
        source=tiny_model_dir,
    )


def deploy(client, app, application, workers_started=True):
    response = client.post(f"/applications/{application.id}/deploy", headers=HX)
    assert response.status_code == 200 and response.headers["HX-Redirect"] == f"/applications/{application.id}"
    return wait_status(app, application.id, {"running", "failed"})


def test_deploy_call_and_stop(app, client, auth, member, factory, tiny, workers):
    workers.start(2)
    application = factory.application(member, tiny, name="hello-tiny", config=dict(CONFIG))
    auth.login(member)
    running = deploy(client, app, application)
    assert running.status == "running", running.last_error
    assert running.endpoint == f"http://127.0.0.1:{running.process_port}/v1" and running.deployed_at
    assert [p["name"] for p in running.deploy_phases] == [
        "queued",
        "starting process",
        "loading model",
        "warming up",
        "ready",
    ]
    assert all(p["seconds"] is not None for p in running.deploy_phases)
    assert len(server_processes(application.id)) == 1

    page = client.get(f"/applications/{application.id}").text
    assert "Call it" in page and running.endpoint in page and "curl" in page and "server process" in page

    key = new_key(app, application.id)
    client_ = openai.OpenAI(base_url=running.endpoint, api_key=key, max_retries=0)
    assert [m.id for m in client_.models.list().data] == ["hello-tiny"]

    chat = client_.chat.completions.create(
        model="hello-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=12, extra_body={"min_tokens": 12}
    )
    assert chat.object == "chat.completion" and chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 12 and chat.usage.prompt_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 12

    pieces = list(
        client_.chat.completions.create(
            model="hello-tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"min_tokens": 8},
        )
    )
    assert pieces[0].choices[0].delta.role == "assistant"
    assert pieces[-2].choices[0].finish_reason == "length" and pieces[-1].usage.completion_tokens == 8
    assert len([p for p in pieces if p.choices and p.choices[0].delta.content]) >= 2  # really streamed

    completion = client_.completions.create(
        model="hello-tiny", prompt="hello world", max_tokens=5, extra_body={"min_tokens": 5}
    )
    assert completion.object == "text_completion" and completion.usage.completion_tokens == 5
    streamed = "".join(
        c.choices[0].text
        for c in client_.completions.create(
            model="hello-tiny", prompt="hello world", max_tokens=5, stream=True, temperature=0
        )
    )
    assert (
        streamed
        == client_.completions.create(model="hello-tiny", prompt="hello world", max_tokens=5, temperature=0)
        .choices[0]
        .text
    )

    with pytest.raises(openai.BadRequestError) as bad:
        client_.chat.completions.create(model="hello-tiny", messages=[], max_tokens=5)
    assert bad.value.body["message"] == "'messages' must be a non-empty list." and bad.value.body["param"] == "messages"

    # Keys: none, wrong, revoked → 401 in OpenAI's error shape; changes apply without a restart.
    raw = httpx.get(running.endpoint + "/models")
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=running.endpoint, api_key="llm-wrong", max_retries=0).models.list()
    with app.app_context():
        from llmapp.models import ApiKey

        key_id = db.session.scalar(db.select(ApiKey.id).where(ApiKey.application_id == application.id))
    assert client.post(f"/applications/{application.id}/keys/{key_id}/revoke", headers=HX).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client_.models.list()
    fresh = client.post(f"/applications/{application.id}/keys", data={"label": "ci"}, headers=HX)
    plain = fresh.text.split('class="mono new-key">')[1].split("<")[0]
    assert openai.OpenAI(base_url=running.endpoint, api_key=plain, max_retries=0).models.list().data

    # Stop: stopping, then stopped; the process is gone and the endpoint with it.
    pid = running.process_pid
    assert client.post(f"/applications/{application.id}/stop", headers=HX).status_code == 200
    stopped = wait_status(app, application.id, {"stopped"}, timeout=30)
    assert stopped.endpoint is None and stopped.process_pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.endpoint.replace("/v1", "/health"))
    text = log_text(app, application.id)
    for line in ("deploy requested", "deploy job started", "ready on port", "stop requested", "stopped"):
        assert line in text


def test_a_failed_deploy_says_why_and_leaves_nothing(app, client, auth, member, factory, workers):
    workers.start(1)
    missing = factory.model(
        name="missing",
        parameters_billions=1,
        precision="fp32",
        context_length=512,
        engine="transformers",
        source="/nonexistent/model-dir",
    )
    application = factory.application(member, missing, name="broken", config=dict(CONFIG))
    auth.login(member)
    failed = deploy(client, app, application)
    assert failed.status == "failed"
    assert "/nonexistent/model-dir does not exist on this host" in failed.last_error
    assert failed.deploy_phases[-1]["status"] == "failed"
    assert server_processes(application.id) == []
    assert "does not exist on this host" in log_text(app, application.id)
    page = client.get(f"/applications/{application.id}").text
    assert "Why it failed" in page and "does not exist on this host" in page
