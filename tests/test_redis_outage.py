"""Redis goes away and comes back (its own embedded server here, stopped and started on the same port,
as a restart would): the platform, the workers and a running app server each stay consistent and say
so clearly meanwhile, and everything resumes without a restart of anything."""

import httpx
import pytest
import redis

from conftest import HX, new_key, row, running_app, server_processes, status, wait_for, wait_status
from llmapp.embedded import EmbeddedRedis
from llmapp.extensions import db
from llmapp.models import ApiKey


@pytest.fixture
def private_redis(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", publish=False)
    server.start()
    yield server
    if server.client is not None:
        server.stop()


@pytest.fixture
def config_overrides(private_redis):
    return {"REDIS_URL": private_redis.url}


def keys_of(app, application_id) -> int:
    with app.app_context():
        return db.session.scalar(
            db.select(db.func.count()).select_from(ApiKey).filter_by(application_id=application_id)
        )


def test_a_redis_outage_is_survived_and_everything_resumes(
    app, client, auth, member, factory, tiny, workers, private_redis, tmp_path
):
    import os
    import signal

    workers.env["REDIS_URL"] = private_redis.url
    workers.output = tmp_path / "workers.out"
    workers.start(1)
    steady, api, key = running_app(app, client, auth, member, factory, tiny, "steady", restart_policy="never")
    waiting = factory.application(member, tiny, name="waiting", config=steady.config)
    assert api.completions.create(model="steady", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
    health_url = steady.endpoint.replace("/v1", "/health")
    port = int(private_redis.url.rsplit(":", 1)[1].split("/")[0])

    private_redis.stop()  # saves its data, as a restart does
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(private_redis.url).ping()

    # The endpoint serves the keys it knows (not a plain-text 500), and answers 503 for one it can't check.
    during = httpx.post(
        steady.endpoint + "/completions",
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": "during-the-outage"},
        json={"model": "steady", "prompt": "hi", "max_tokens": 2},
        timeout=30,
    )
    assert during.status_code == 200, during.text
    unknown = httpx.post(
        steady.endpoint + "/completions",
        headers={"Authorization": "Bearer llm-never-seen"},
        json={"model": "steady", "prompt": "hi"},
        timeout=30,
    )
    assert unknown.status_code == 503 and unknown.json()["error"]["type"] == "server_error"
    wait_for(lambda: httpx.get(health_url).json()["redis"] == "unreachable", 30, 0.2, "/health to say so")
    assert httpx.get(health_url).json()["status"] == "ready"

    # The pages: login works (the rate limiter falls back to memory), a deploy is refused with a
    # message and changes nothing, a key is not created behind the user's back.
    fresh = app.test_client()
    assert fresh.post("/login", data={"email": member.email, "password": "password123"}).status_code == 302
    refused = client.post(f"/applications/{waiting.id}/deploy", headers=HX)
    assert refused.status_code == 200
    page = client.get(f"/applications/{waiting.id}").text
    assert "Redis is unreachable. Nothing changed" in page and status(app, waiting.id) == "stopped"
    before = keys_of(app, steady.id)
    no_key = client.post(f"/applications/{steady.id}/keys", data={"label": "during"}, headers=HX)
    assert no_key.status_code == 200 and "The key was not created" in no_key.text and "new-key" not in no_key.text
    assert keys_of(app, steady.id) == before
    assert client.get(f"/applications/{steady.id}").status_code == 200
    # The worker's reconcile loop meets the outage and says so, but does not die of it.
    wait_for(lambda: "the reconcile of" in workers.printed(), 60, 0.2, "the reconcile loop to notice")

    private_redis.start(port=port)  # back, with its data

    # What the server logged during the outage reaches the log once Redis is back.
    connection = redis.Redis.from_url(private_redis.url)

    def logged(request_id):
        entries = connection.xrange(f"llmapp:logs:{steady.id}")
        return any(fields.get(b"request_id") == request_id.encode() for _, fields in entries)

    wait_for(lambda: logged("during-the-outage"), 60, 0.2, "the line logged during the outage")
    wait_for(lambda: httpx.get(health_url).json()["redis"] == "ok", 60, 0.2, "the server to reach Redis again")
    # The reconcile resumes: a server killed now is noticed and the application fails with the reason.
    os.kill(steady.process_pid, signal.SIGKILL)
    try:
        failed = wait_status(app, steady.id, {"failed"}, timeout=90)
    except AssertionError as e:  # what the workers went through, to see why
        raise AssertionError(f"{e}\n--- the workers printed:\n{workers.printed()[-6000:]}") from e
    assert failed.last_error == "The server process died (restart policy: never)."
    assert server_processes(steady.id) == []
    # And the pages work again: a deploy runs, a key is made.
    assert client.post(f"/applications/{waiting.id}/deploy", headers=HX).status_code == 200
    assert wait_status(app, waiting.id, {"running", "failed"}).status == "running"
    assert new_key(app, waiting.id) and row(app, waiting.id).endpoint
