"""Logs of a deployed application: a secret on the server's logging path is redacted in every reader,
a forged line in a request's names reaches the log neutralised, and the workers trim every
application's log by themselves."""

import json
import time

import httpx
import redis

from conftest import (
    HOSTILE,
    HX,
    LiveServer,
    fetch,
    has_raw_control,
    read_events,
    running_app,
    wait_for,
    wait_logged,
    write,
)
from llmapp import keyspace
from llmapp.services import logs as logs_service


def test_a_secret_on_the_servers_logging_path_is_redacted_everywhere(app, client, auth, member, factory, tiny, workers):
    """A secret value reaches the server's real logging path (a client sends it as `user`, which the
    DEBUG request line logs) and is redacted in the stream, the pane, the download and the SSE events."""
    workers.start(1)
    secret = "sk-very-secret-value-42"
    deployed, api, _ = running_app(
        app, client, auth, member, factory, tiny, "secretive", log_level="DEBUG",
        env=[{"name": "UPSTREAM_KEY", "value": secret, "secret": True}],
    )  # fmt: skip
    response = api.completions.with_raw_response.create(model="secretive", prompt="hi", max_tokens=2, user=secret)
    request_id = response.headers["X-Request-Id"]
    wait_logged(app, deployed.id, "/v1/completions request:")
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    raw = b"".join(b"".join(fields.values()) for _, fields in connection.xrange(keyspace.logs(deployed.id)))
    assert secret.encode() not in raw and "'user': '••••'".encode() in raw  # redacted before it was written
    assert request_id.encode() in raw
    assert secret not in client.get(f"/applications/{deployed.id}/logs", headers=HX).text
    assert secret not in client.get(f"/applications/{deployed.id}/logs?q=user", headers=HX).text
    assert secret not in client.get(f"/applications/{deployed.id}/logs/download?format=ndjson").text
    with LiveServer(app) as server:
        live = httpx.Client(base_url=server.url, timeout=30)
        live.post("/login", data={"email": member.email, "password": "password123"})
        events = []
        with live.stream("GET", f"/applications/{deployed.id}/logs/stream?after=0-0") as stream:
            read_events(stream.iter_lines(), 3, events)
        live.close()
    assert events and secret not in json.dumps(events)
    # The application's own log level shows the request's detail, and the request's line its fields.
    with app.app_context():
        found = logs_service.search(fetch(app, deployed.id), text=request_id, limit=10).lines
    assert {line.level for line in found} == {"DEBUG", "INFO"}
    answered = next(line for line in found if line.level == "INFO")
    assert answered.fields["status"] == 200 and answered.fields["tokens_out"] >= 1 and answered.fields["key"] == "test"


def test_a_forged_line_in_a_model_or_parameter_name_reaches_the_log_neutralised(served_tiny):
    """Through a real app server: a model name and a parameter name with CR, LF, ESC and the rest are
    logged escaped, in the message and in every field."""
    served_tiny.idle()
    request_id = f"forged-{time.monotonic_ns()}"
    response = httpx.post(
        served_tiny.url + "/completions",
        headers={**served_tiny.headers, "X-Request-Id": request_id},
        json={"model": HOSTILE, "prompt": "hi", "max_tokens": 1, HOSTILE: 1},
        timeout=60,
    )
    assert response.status_code in (400, 404), response.text
    lines = wait_for(
        lambda: [line for line in served_tiny.log() if line.get("request_id") == request_id], 30, 0.1, "the lines"
    )
    answered = next(line for line in lines if f" {response.status_code}" in line["message"])
    assert "x\\r\\nid: 9999\\r\\n\\x1b[31m\\u2028\\u2029\\u202e\\x85\\x00\\x07\\rend" in answered["message"]
    for line in lines:
        for name, value in line.items():
            assert not has_raw_control(value), (name, value)
            if name == "fields":
                assert not has_raw_control(repr(json.loads(value)))


def test_the_workers_apply_every_applications_retention_by_themselves(app, factory, member, workers):
    """A stopped application's log (no server trims it) is trimmed by the workers' periodic job."""
    application = factory.application(member, factory.model(), name="quiet", config={"log_lines": 100})
    for i in range(150):
        write(app, application.id, f"line {i}")
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    assert connection.xlen(keyspace.logs(application.id)) == 150
    workers.start()
    wait_for(lambda: connection.xlen(keyspace.logs(application.id)) == 100, 60, 0.2, "the workers' trim")
