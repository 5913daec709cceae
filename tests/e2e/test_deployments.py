"""Deploy for real: RQ workers (separate processes) start app servers (separate processes) that the
official `openai` client calls. Nothing here calls a job function directly or fakes an HTTP server."""

import concurrent.futures
import json
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess

import httpx
import openai
import psutil
import pytest

from conftest import (
    HX,
    WORKER_ENV,
    call_snippets,
    deploy,
    health_of,
    log_text,
    new_key,
    row,
    run_snippet,
    running_app,
    server_processes,
    sse_events,
    status,
    wait_for,
    wait_logged,
    wait_status,
)
from conftest import SERVING_CONFIG as CONFIG
from llmapp.extensions import db


def test_deploy_call_and_stop(app, client, auth, member, factory, tiny, workers, gateway):
    workers.start(2)
    app.config["GATEWAY_URL"] = gateway  # the snippets call through it
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
    assert "Call it" in page and running.endpoint in page and "curl" in page
    assert page.index(gateway) < page.index(running.endpoint)  # the gateway first, the server's own after
    assert "server process" in client.get(f"/applications/{application.id}/logs", headers=HX).text

    key = new_key(app, application.id)
    through_gateway = openai.OpenAI(base_url=gateway, api_key=key, max_retries=0)

    def gateway_knows():  # the route and key reach the gateway a moment after the database says running
        try:
            return [m.id for m in through_gateway.models.list().data] == ["hello-tiny"]
        except openai.APIStatusError:
            return False

    wait_for(gateway_knows, 30, 0.1, "the gateway to route to hello-tiny")
    # Every snippet on the page runs as pasted, the key read from the environment.
    assert [lang for lang, _ in call_snippets(page)] == ["sh", "python"]
    for lang, snippet in call_snippets(page):  # through the gateway
        assert gateway in snippet and run_snippet(lang, snippet, LLMAPP_KEY=key).returncode == 0
    streamed = through_gateway.chat.completions.create(
        model="hello-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"min_tokens": 6},
    )  # fmt: skip
    assert [p.usage.completion_tokens for p in streamed if p.usage] == [6]
    raw = through_gateway.completions.with_raw_response.create(model="hello-tiny", prompt="hi", max_tokens=1)
    assert running.deployed_release == 1 and raw.headers["x-llmapp-release"] == "1"  # the release that served it
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
    assert len(call_snippets(fresh.text)) == 2  # the new key is filled in: no LLMAPP_KEY needed
    for lang, snippet in call_snippets(fresh.text):
        assert plain in snippet and run_snippet(lang, snippet).returncode == 0

    check_the_playground(app, client, application, member)

    # Stop: stopping, then stopped; the process is gone. The application keeps its endpoint's address.
    pid = running.process_pid
    assert client.post(f"/applications/{application.id}/stop", headers=HX).status_code == 200
    stopped = wait_status(app, application.id, {"stopped"}, timeout=30)
    assert stopped.endpoint == running.endpoint and stopped.process_pid is None
    page = client.get(f"/applications/{application.id}").text
    assert "Call it" not in page and "It answers while the application runs" in page
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.endpoint.replace("/v1", "/health"))
    wait_logged(app, application.id, "INFO stopped")
    text = log_text(app, application.id)
    for line in ("deploy requested", "deploy job started", "ready on port", "stop requested"):
        assert line in text


def check_the_playground(app, client, application, owner):
    """A chat through the real endpoint, with a key the platform holds: never in a page, a stream or a list."""
    import html
    import re

    from llmapp import keyspace, secrets_box

    def turn(message, extra=None):
        sent = client.post(
            f"/applications/{application.id}/playground",
            data={"message": message, "max_tokens": 6, "temperature": 0, **(extra or {})},
            headers=HX,
        )
        assert sent.status_code == 200 and html.escape(message) in sent.text
        fresh = re.search(r'<form id="playground-form"[^>]*hx-swap-oob="true".*?</form>', sent.text, re.S).group(0)
        assert message not in fresh  # the form comes back empty, for the next message
        stream_url = re.search(r'sse-connect="([^"]+)"', sent.text).group(1)
        reply = client.get(stream_url)
        events = sse_events(reply.text)
        assert events[-1][0] == "done" and [name for name, _ in events[:-1]] == ["token"] * (len(events) - 1)
        assert len(events) >= 2, events  # at least one token, then how it went
        done = events[-1][1]
        return sent, reply, stream_url, done

    sent, reply, stream_url, done = turn("hi <b>there</b>")
    request_id = re.search(r"data-request-id>([^<]+)<", done).group(1)
    first_prompt, completion = map(int, re.search(r"(\d+) \+ (\d+) tokens", done).groups())
    assert 1 <= completion <= 6 and "s · first token" in done
    # The request went through the endpoint under the playground's key, and its log line says so.
    import redis as redis_lib

    from llmapp.runtime import logs

    connection = redis_lib.Redis.from_url(app.config["REDIS_URL"])

    def lines():
        return [line for line in logs.tail(connection, application.id, 2000) if line.get("request_id") == request_id]

    (line,) = wait_for(lines, 30, 0.2, "the playground request's log line")
    assert f"key=playground · user {owner.id}" in line["message"] and " 200 " in line["message"]
    # Its label names the user by id, never by e-mail: not in the log, nor in Prometheus's labels.
    from llmapp.services.metrics import derived_metrics_token

    running = row(app, application.id)
    token = {"Authorization": f"Bearer {derived_metrics_token(WORKER_ENV['SECRET_KEY'])}"}
    labelled, metrics_url = f'api_key="playground · user {owner.id}"', running.endpoint.replace("/v1", "/metrics")
    exposed = wait_for(
        lambda: labelled in (text := httpx.get(metrics_url, headers=token).text) and text, 30, 0.2, "the key's label"
    )
    assert owner.email not in exposed + line["message"]
    # /health tells anyone it is alive, and only the platform's token what it runs and how.
    assert httpx.get(running.endpoint.replace("/v1", "/health")).json() == {"status": "ready"}
    assert health_of(running)["config"]["max_concurrency"] == running.config["max_concurrency"]

    # The conversation goes on: the second request carries the first exchange, and the settings beyond
    # the sampling people reach for (a system prompt, top-p, stop sequences), shown back as code.
    extra = {"system": "Be brief.", "top_p": 0.9, "stop": "###\nEND"}
    _, second_reply, _, second = turn("and again", extra)
    assert int(re.search(r"(\d+) \+ \d+ tokens", second).group(1)) > first_prompt
    [(lang, curl)] = call_snippets(second)
    body = json.loads(shlex.split(curl.replace("\\\n", " "))[-1])
    assert body["messages"][0] == {"role": "system", "content": "Be brief."} and body["top_p"] == 0.9
    assert body["stop"] == ["###", "END"] and body["messages"][-1] == {"role": "user", "content": "and again"}
    assert [m["role"] for m in body["messages"][1:3]] == ["user", "assistant"]  # the first exchange
    page = client.get(f"/applications/{application.id}").text
    assert "hi &lt;b&gt;there&lt;/b&gt;" in page and "and again" in page  # kept, and escaped

    # The key: in Redis (encrypted), published, never shown.
    with app.app_context():
        plain = secrets_box.decrypt(connection.get(keyspace.playground(application.id, owner.id, "key")).decode())
    for text in (sent.text, reply.text, second_reply.text, page, client.get(f"/applications/{application.id}").text):
        assert plain not in text
    keys_section = page.split('id="api-keys"')[1].split('id="usage"')[0]
    assert "playground ·" not in keys_section  # not among the user's keys (its usage is counted, below them)

    # A reply streams once; bad input is refused at the field, and nothing is sent.
    assert "This reply has ended" in sse_events(client.get(stream_url).text)[-1][1]
    for data, words in (
        ({"message": " ", "temperature": 0.5}, "Type a message."),
        ({"message": "x", "temperature": "nan"}, "Between 0 and 2."),
        ({"message": "x", "temperature": 0, "top_p": 0}, "Above 0, at most 1."),
        ({"message": "x", "temperature": 0, "stop": "a\nb\nc\nd\ne"}, "At most 4 stop sequences, one per line."),
    ):
        refused = client.post(f"/applications/{application.id}/playground", data={"max_tokens": 4, **data}, headers=HX)
        assert refused.status_code == 422 and words in refused.text
        assert refused.headers["HX-Retarget"] == "#playground-form"
    cleared = client.post(f"/applications/{application.id}/playground/clear", headers=HX).text
    assert "and again" not in cleared and "Say something to" in cleared


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
    wait_logged(app, application.id, "deploy failed: The model could not be loaded")
    # Checked before a server process starts (and spends seconds importing torch) for nothing.
    assert "server process" not in log_text(app, application.id)
    assert "loading model" not in [p["name"] for p in failed.deploy_phases]
    page = client.get(f"/applications/{application.id}").text
    assert "Why it failed" in page and "does not exist on this host" in page


def test_concurrency_timeout_cache_log_level_and_environment(
    app, client, auth, member, factory, tiny, workers, tmp_path
):
    # The worker's environment holds a cloud credential and a name the operator allows through.
    workers.env.update(AWS_SECRET_ACCESS_KEY="worker-cloud-key", LLMAPP_SERVER_ENV_ALLOW="SITE_NAME", SITE_NAME="lab")
    workers.start(1)
    deployed, api, _ = running_app(
        app,
        client,
        auth,
        member,
        factory,
        tiny,
        "strict",
        max_concurrency=1,
        timeout_s=1,
        cache_size=1,
        batch_size=1,
        log_level="ERROR",
        env=[
            {"name": "GREETING", "value": "bonjour"},
            {"name": "UPSTREAM_TOKEN", "value": "tok-secret-123", "secret": True},
        ],
    )
    long_request = {"model": "strict", "prompt": "hello", "max_tokens": 6000, "extra_body": {"min_tokens": 6000}}

    # Timeout 1 s: a long generation is answered 504, and the generation itself is cancelled.
    with pytest.raises(openai.APIStatusError) as timed_out:
        api.completions.create(**long_request)
    assert timed_out.value.status_code == 504 and "timeout" in timed_out.value.message
    wait_for(lambda: health_of(deployed)["engine"]["cancelled_generations"] == 1, 10, message="cancelled generation")
    before = health_of(deployed)["engine"]["batches"]
    assert api.completions.create(model="strict", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
    assert health_of(deployed)["engine"]["batches"] == before + 1  # the batcher was free again

    # Max concurrency 1: while one request is in flight the next gets 429 with Retry-After.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            lambda: httpx.post(
                deployed.endpoint + "/completions",
                headers={"Authorization": f"Bearer {api.api_key}"},
                json={"model": "strict", "prompt": "hello", "max_tokens": 6000, "min_tokens": 6000},
                timeout=30,
            )
        )
        wait_for(lambda: health_of(deployed)["in_flight"] == 1, 10, 0.02, message="a request in flight")
        with pytest.raises(openai.RateLimitError) as limited:
            api.completions.create(model="strict", prompt="hi", max_tokens=2)
        assert limited.value.response.headers["Retry-After"] == "1"
        assert in_flight.result().status_code == 504

    # Cache size 1: a deterministic request is a MISS then a HIT; another evicts it (LRU at capacity).
    def cached(prompt):
        raw = api.completions.with_raw_response.create(model="strict", prompt=prompt, max_tokens=4, temperature=0)
        return raw.headers["X-Cache"], raw.parse().choices[0].text

    first = cached("hello world")
    assert first[0] == "MISS" and cached("hello world") == ("HIT", first[1])
    assert cached("the quick brown fox")[0] == "MISS"
    assert cached("hello world")[0] == "MISS"
    sampled = api.completions.with_raw_response.create(model="strict", prompt="hello world", max_tokens=4)
    assert sampled.headers["X-Cache"] == "MISS"  # temperature 1 is not deterministic: never cached
    assert health_of(deployed)["cache"]["evictions"] >= 1

    # Batch size 1: every forward pass serves one request.
    assert set(health_of(deployed)["engine"]["batch_size_histogram"]) == {"1"}

    # Log level ERROR: the server logs no request lines (INFO) and no 429/504 warnings (once everything
    # it logged has reached Redis).
    wait_for(lambda: health_of(deployed)["log"]["queued"] == 0, 30, 0.1, "the server's log to be written")
    text = log_text(app, deployed.id)
    assert not any(f"/v1/completions {code}" in text for code in (200, 429, 504))

    # Environment variables reach the server's process; the secret never reaches logs or pages.
    environment = psutil.Process(deployed.process_pid).environ()
    assert environment["GREETING"] == "bonjour" and environment["UPSTREAM_TOKEN"] == "tok-secret-123"
    assert "SECRET_KEY" not in environment and "DATABASE_URL" not in environment
    # Built from an allow-list, not a deny-list: the worker's cloud key stays behind.
    assert "AWS_SECRET_ACCESS_KEY" not in environment and "REDIS_URL" not in environment
    assert environment["SITE_NAME"] == "lab" and environment["PATH"] and environment["LLMAPP_REDIS_URL"]
    assert "tok-secret-123" not in text
    assert "tok-secret-123" not in client.get(f"/applications/{deployed.id}").text
    # Variables a library might read while it loads: not forked from the fork server, started cold.
    assert "started cold: GREETING, SITE_NAME, UPSTREAM_TOKEN may be read while torch and transformers load" in text
    # Started with `python -I`; as root, as the unprivileged account (CI makes the interpreter reachable
    # for it and requires it), else with a warning that says what the account could not read.
    server = psutil.Process(deployed.process_pid)
    assert server.cmdline()[1:3] == ["-I", "-u"]
    if os.geteuid() == 0 and (os.environ.get("LLMAPP_REQUIRE_SERVER_USER") or server.uids().real != 0):
        # An account of its own: its port's place in the range, above the base; nobody's group.
        with app.app_context():
            own_uid = app.config["SERVER_UID_BASE"] + app.config["SERVER_PORTS"].index(deployed.port)
        assert server.uids().real == own_uid and server.gids().real == pwd.getpwnam("nobody").pw_gid
        assert environment["HOME"] == "/nonexistent" and environment["USER"] == f"llmapp-server-{own_uid}"
    elif os.geteuid() == 0:
        assert "this server runs with the platform's rights (an operator can change that)" in text
    # The spec on disk: readable by its owner only, and no credential in it (not even Redis's URL).
    run = tmp_path / "instance" / "run"
    spec = run / f"{deployed.id}.{deployed.replicas[0].id}.json"
    assert stat.S_IMODE(spec.stat().st_mode) == 0o600 and stat.S_IMODE(run.stat().st_mode) == 0o700
    assert stat.S_IMODE((run / f"{deployed.id}.log").stat().st_mode) == 0o600
    assert "redis" not in spec.read_text().lower() and "tok-secret-123" not in spec.read_text()


def test_batching_debug_logs_and_cache_off_then_openai_engine_in_front(
    app, client, auth, member, factory, tiny, workers, tmp_path
):
    workers.start(2)
    backend, api, backend_key = running_app(
        app,
        client,
        auth,
        member,
        factory,
        tiny,
        "batched",
        max_concurrency=16,
        batch_size=4,
        cache_size=0,
        log_level="DEBUG",
    )

    # Batch size 4: eight concurrent requests share forward passes of at most four.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: api.completions.create(
                    model="batched", prompt=f"hello {i}", max_tokens=16, extra_body={"min_tokens": 16}
                ),
                range(8),
            )
        )
    assert all(r.usage.completion_tokens == 16 for r in results)
    histogram = health_of(backend)["engine"]["batch_size_histogram"]
    sizes = {int(size) for size in histogram}
    assert max(sizes) > 1 and max(sizes) <= 4, histogram
    wait_logged(app, backend.id, "/v1/completions 200")
    text = log_text(app, backend.id)
    assert "batch of 4 request(s)" in text or "batch of 3 request(s)" in text or "batch of 2 request(s)" in text
    assert "DEBUG /v1/completions request:" in text and "/v1/completions 200" in text  # DEBUG shows detail
    # The same lines reach the server's log file on the host (written by a thread of its own).
    host_log = tmp_path / "instance" / "run" / f"{backend.id}.log"  # the workers' instance folder
    wait_for(lambda: "INFO /v1/completions 200" in host_log.read_text(), 30, 0.2, "the host's log file")

    # Cache size 0: no cache, no X-Cache header, never a HIT.
    for _ in range(2):
        raw = api.completions.with_raw_response.create(model="batched", prompt="same", max_tokens=3, temperature=0)
        assert "X-Cache" not in raw.headers

    # An `openai` engine application in front of it: upstream URL and model from the registry, the key
    # from one of its environment variables.
    upstream = factory.model(
        name="batched-upstream",
        parameters_billions=0.0004,
        precision="fp32",
        context_length=8192,
        engine="openai",
        source="llmapp",
        base_url=backend.endpoint,
        upstream_model="batched",
    )
    proxy, proxy_api, _ = running_app(
        app,
        client,
        auth,
        member,
        factory,
        upstream,
        "proxy",
        cache_size=4,
        env=[{"name": "OPENAI_API_KEY", "value": backend_key, "secret": True}],
    )
    chat = proxy_api.chat.completions.create(
        model="proxy", messages=[{"role": "user", "content": "hi"}], max_tokens=6, extra_body={"min_tokens": 6}
    )
    assert chat.model == "proxy" and chat.usage.completion_tokens == 6
    chunks = list(
        proxy_api.chat.completions.create(
            model="proxy",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            extra_body={"min_tokens": 6},
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert health_of(proxy)["engine"]["forwarded"] == 2
    with pytest.raises(openai.BadRequestError):  # upstream errors come back in the same shape
        proxy_api.completions.create(model="proxy", prompt="x", max_tokens=100_000)

    # Two applications' servers run as two accounts: one can't read the other's environment (its keys).
    if os.geteuid() == 0 and os.environ.get("LLMAPP_REQUIRE_SERVER_USER"):
        proxy_uid = psutil.Process(proxy.process_pid).uids().real
        assert proxy_uid != psutil.Process(backend.process_pid).uids().real
        peek = subprocess.run(
            ["cat", f"/proc/{backend.process_pid}/environ"], user=proxy_uid, capture_output=True, timeout=30
        )
        assert peek.returncode != 0 and b"Permission denied" in peek.stderr


def test_kill_9_with_restart_policy_never_fails_the_application(app, client, auth, member, factory, tiny, workers):
    workers.start(1)
    deployed, _, _ = running_app(app, client, auth, member, factory, tiny, "fragile", restart_policy="never")
    os.kill(deployed.process_pid, signal.SIGKILL)
    failed = wait_status(app, deployed.id, {"failed"}, timeout=15)
    assert failed.last_error == "The server process died (restart policy: never)."
    assert server_processes(deployed.id) == []
    wait_logged(app, deployed.id, "The server process died")


def test_kill_9_with_restart_on_failure_serves_again(app, client, auth, member, factory, tiny, workers):
    workers.start(1)
    deployed, _, key = running_app(
        app, client, auth, member, factory, tiny, "phoenix", restart_policy="on-failure", max_restarts=2
    )
    os.kill(deployed.process_pid, signal.SIGKILL)
    wait_for(lambda: row(app, deployed.id).restarts, 15, 0.2, "a recorded restart")
    back = wait_status(app, deployed.id, {"running"}, timeout=60)
    assert back.process_pid != deployed.process_pid
    assert [r["reason"] for r in back.restarts] == ["the server process died"]
    # The same endpoint answers, with the same key: a client configured with the URL goes on working.
    assert back.endpoint == deployed.endpoint and back.port == deployed.port
    again = openai.OpenAI(base_url=deployed.endpoint, api_key=key, max_retries=0)
    assert again.completions.create(model="phoenix", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
    assert "Restarts (1)" in client.get(f"/applications/{deployed.id}").text

    # A redeploy keeps it too; only a port taken meanwhile moves it, and the log says so.
    client.post(f"/applications/{deployed.id}/stop", headers=HX)
    wait_status(app, deployed.id, {"stopped"}, timeout=30)
    assert deploy(client, app, row(app, deployed.id)).endpoint == deployed.endpoint
    client.post(f"/applications/{deployed.id}/stop", headers=HX)
    wait_status(app, deployed.id, {"stopped"}, timeout=30)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may be in TIME_WAIT
        squatter.bind(("127.0.0.1", deployed.port))
        squatter.listen()
        moved = deploy(client, app, row(app, deployed.id))
    assert moved.status == "running" and moved.port != deployed.port
    assert moved.endpoint == f"http://127.0.0.1:{moved.port}/v1"
    wait_logged(app, deployed.id, f"port {deployed.port} is taken")
    assert moved.endpoint in client.get(f"/applications/{deployed.id}").text


def test_a_deploy_whose_worker_died_is_followed_to_ready_while_its_server_loads(
    app, client, auth, member, factory, tiny, workers
):
    workers.start(1)
    application = factory.application(member, tiny, name="orphan", config=dict(CONFIG))
    auth.login(member)
    client.post(f"/applications/{application.id}/deploy", headers=HX)
    pid = wait_for(lambda: [r.pid for r in row(app, application.id).replicas if r.pid], 30, 0.05, "its server")[0]
    os.kill(pid, signal.SIGSTOP)  # the server is alive but still loading, as on a busy machine
    workers.kill(workers.processes[0])  # the worker and its work horse die mid-deploy
    workers.start(1)  # another worker's reconcile finds the deploy without its job
    wait_logged(app, application.id, "following them to ready")  # the reconcile follows it
    assert status(app, application.id) == "deploying"  # judged by where it goes, not by one instant
    os.kill(pid, signal.SIGCONT)
    repaired = wait_status(app, application.id, {"running", "failed"}, timeout=90)
    assert repaired.status == "running", repaired.last_error
    assert repaired.process_pid == pid and len(server_processes(application.id)) == 1
    assert [p["name"] for p in repaired.deploy_phases][-1] == "ready"
    wait_logged(app, application.id, "completed by the reconcile")


def test_a_deploy_job_run_twice_starts_one_process(app, client, auth, member, factory, tiny, workers):
    import redis
    from rq import Queue

    from llmapp import queues

    workers.start(2)
    application = factory.application(member, tiny, name="twice", config=dict(CONFIG))
    auth.login(member)
    client.post(f"/applications/{application.id}/deploy", headers=HX)
    deploy_id = row(app, application.id).deploy_id
    queue = Queue("default", connection=redis.Redis.from_url(app.config["REDIS_URL"]), serializer=queues.SERIALIZER)
    duplicate = queue.enqueue("jobs.deploy.deploy_application", str(application.id), deploy_id)  # the same again
    assert wait_status(app, application.id, {"running", "failed"}).status == "running"
    # The duplicate has run to its end too (whichever of the two ran first).
    wait_for(lambda: duplicate.get_status(refresh=True) in ("finished", "failed"), 60, 0.1, "the duplicate job")
    assert len(server_processes(application.id)) == 1


def test_a_second_deploy_is_refused_while_one_rolls_out_and_a_flood_restarts_nothing(
    app, client, auth, member, factory, tiny, workers
):
    workers.start(1)
    first, _, key = running_app(app, client, auth, member, factory, tiny, "busy")
    application_id = first.id
    for _ in range(2):  # a double click: the first rolls release 1 out again, the second is refused
        response = client.post(f"/applications/{application_id}/deploy", headers=HX, follow_redirects=False)
        assert response.headers["HX-Redirect"] == f"/applications/{application_id}"
    assert (
        "Release 1 is being rolled out; wait until it serves or fails."
        in client.get(f"/applications/{application_id}").text
    )
    assert client.post(f"/applications/{application_id}/delete").status_code == 303
    wait_for(
        lambda: (
            (now := row(app, application_id)).rolling_to is None and len(server_processes(application_id)) == 1 and now
        ),
        120,
        0.2,
        "the roll-out to end with one server",
    )
    deployed = row(app, application_id)
    assert deployed.status == "running" and deployed.deployed_release == 1 and deployed.last_error is None

    # A flood of huge bodies can't get the server restarted: refused (413) or refused without
    # tokenising (400), while /health keeps answering; three reconciles later nothing has happened.
    def flood(size):
        body = json.dumps({"model": "busy", "prompt": "hello world " * (size // 12)})
        return httpx.post(
            deployed.endpoint + "/completions",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=60,
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(flood, [5_000_000, 3_900_000] * 3))
    assert sorted(statuses) == [400] * 3 + [413] * 3

    def sampled():
        return row(app, deployed.id).resource_usage.get("sampled_at")

    for _ in range(3):
        last = sampled()
        wait_for(lambda last=last: sampled() != last, 30, 0.2, "the next reconcile")
    after = row(app, deployed.id)
    assert after.status == "running" and after.restarts == [] and after.process_pid == deployed.process_pid


def test_cli_deploy_keys_and_stop(app, runner, member, factory, tiny, workers):
    import json

    workers.start(1)
    factory.application(member, tiny, name="cli-app", config=dict(CONFIG))
    result = runner.invoke(args=["apps", "deploy", "cli-app", "--wait", "--json"])
    assert result.exit_code == 0, result.output
    deployed = json.loads(result.output)
    assert deployed["status"] == "running" and deployed["endpoint"].startswith("http://127.0.0.1:")
    result = runner.invoke(args=["apps", "keys", "create", "cli-app", "--label", "script", "--json"])
    key = json.loads(result.output)
    assert key["endpoint"] == deployed["endpoint"] and key["key"].startswith("llm-")
    api = openai.OpenAI(base_url=key["endpoint"], api_key=key["key"], max_retries=0)
    assert api.models.list().data[0].id == "cli-app"
    listing = json.loads(runner.invoke(args=["apps", "list", "--json"]).output)
    assert [(a["name"], a["status"]) for a in listing] == [("cli-app", "running")]
    rolled = runner.invoke(args=["apps", "deploy", "cli-app", "--wait", "--json"])  # the same release, afresh
    assert rolled.exit_code == 0 and json.loads(rolled.output)["release"] == 1, rolled.output
    refused = runner.invoke(args=["apps", "rollback", "cli-app"])
    assert refused.exit_code != 0 and "has served no other release to roll back to" in refused.output
    result = runner.invoke(args=["apps", "stop", "cli-app", "--wait", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["status"] == "stopped"
    assert runner.invoke(args=["apps", "stop", "nope"]).exit_code != 0


def test_a_server_that_stops_answering_fails_with_that_reason(app, client, auth, member, factory, tiny, workers):
    workers.start(1)
    deployed, _, _ = running_app(app, client, auth, member, factory, tiny, "frozen", restart_policy="never")
    os.kill(deployed.process_pid, signal.SIGSTOP)  # alive, but silent
    failed = wait_status(app, deployed.id, {"failed"}, timeout=30)
    assert failed.last_error == "The server stopped answering its health checks (restart policy: never)."
    assert server_processes(deployed.id) == []  # the silent process was killed, not left behind


def test_stop_lets_a_request_in_flight_finish(app, client, auth, member, factory, tiny, workers):
    # Several seconds of generation on an idle machine, far longer on a loaded one: a grace and a
    # timeout generous enough that only a stop that does not drain could cut the request off.
    # Both sides: the worker waits out the grace, and the stop job is queued (here) with a time limit
    # above it; a job killed at the default limit would leave the server to the reconcile, which kills.
    workers.env["LLMAPP_STOP_GRACE_S"] = "300"
    app.config["STOP_GRACE_S"] = 300
    workers.start(1)
    deployed, api, _ = running_app(app, client, auth, member, factory, tiny, "draining", timeout_s=600)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Long enough (several seconds idle) that it is still generating when the stop arrives.
        in_flight = pool.submit(
            api.with_options(timeout=600).completions.create,
            model="draining",
            prompt="hello",
            max_tokens=1500,
            extra_body={"min_tokens": 1500},
        )
        wait_for(
            lambda: in_flight.done() or health_of(deployed)["in_flight"] == 1, 120, 0.01, message="a request in flight"
        )
        assert not in_flight.done(), f"the request ended before it was seen in flight: {in_flight.exception()!r}"
        assert client.post(f"/applications/{deployed.id}/stop", headers=HX).status_code == 200
        try:
            answer = in_flight.result(timeout=600)
        except openai.APIError as e:  # what the platform and the server did meanwhile
            raise AssertionError(
                f"{e!r}; the log ends:\n" + "\n".join(log_text(app, deployed.id).splitlines()[-30:])
            ) from e
        assert answer.usage.completion_tokens == 1500  # answered in full, not cut off
    assert wait_status(app, deployed.id, {"stopped"}, timeout=400).process_pid is None


def test_after_the_last_restart_the_application_fails(app, client, auth, member, factory, tiny, workers):
    workers.start(1)
    deployed, _, _ = running_app(
        app, client, auth, member, factory, tiny, "spent", restart_policy="on-failure", max_restarts=0
    )
    os.kill(deployed.process_pid, signal.SIGKILL)
    failed = wait_status(app, deployed.id, {"failed"}, timeout=15)
    assert failed.last_error == "The server process died after 0 restarts."


def test_a_stop_whose_job_was_lost_is_repaired(app, client, auth, member, factory, tiny, workers):
    from llmapp.services import lifecycle

    workers.start(1)
    deployed, _, _ = running_app(app, client, auth, member, factory, tiny, "lost-stop")
    with app.app_context():
        lifecycle.transition(deployed.id, "stop")  # stopping, but no stop job will ever run
    stopped = wait_status(app, deployed.id, {"stopped"}, timeout=20)
    assert stopped.process_pid is None and server_processes(deployed.id) == []
    wait_logged(app, deployed.id, "repaired")


def test_one_reconcile_per_host_at_a_time_whatever_it_waits_on(app, client, auth, member, factory, tiny, workers):
    """Two workers, a reconcile every second, and a silent server whose SIGTERM goes unheard: the
    reconcile that restarts it waits for it, and no other reconcile of the host runs meanwhile."""
    import redis
    from rq.registry import FailedJobRegistry

    from llmapp import queues

    workers.start(2)
    deployed, _, _ = running_app(
        app, client, auth, member, factory, tiny, "overlap", restart_policy="on-failure", max_restarts=1
    )
    os.kill(deployed.process_pid, signal.SIGSTOP)  # silent; a SIGTERM waits; only the SIGKILL ends it
    back = (
        wait_status(app, deployed.id, {"running"}, timeout=180)  # a restart and a deploy, on a loaded machine
        if wait_for(lambda: row(app, deployed.id).restarts, 60, 0.2, "a restart")
        else None
    )
    assert back.process_pid != deployed.process_pid
    assert [r["reason"] for r in back.restarts] == ["the server stopped answering its health checks"]
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    failed = []
    for name in connection.smembers("rq:queues"):
        queue_name = name.decode().removeprefix("rq:queue:")
        failed += FailedJobRegistry(queue_name, connection=connection, serializer=queues.SERIALIZER).get_job_ids()
    assert failed == []  # no reconcile lost a race and failed
