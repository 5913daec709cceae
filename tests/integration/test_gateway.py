"""The gateway (`python -m llmapp.gateway`, a real process) on the real Redis, in front of replicas that
are real HTTP servers of the test's own (they answer which replica they are, hold an answer until told,
stream, or die mid-stream). Routes come from the platform's own publishing (transitions, keys), or,
for several replicas of one application (which deploys do not make yet), as JSON the platform would
publish."""

import json
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import httpx
import openai
import pytest
import redis

from conftest import APP_KEY, ROUTE_KEY, QuietHTTPServer, publish_route, wait_for
from llmapp import keyspace
from llmapp.extensions import db
from llmapp.models import Application
from llmapp.runtime import keys as runtime_keys


class FakeReplica:
    """An app server's stand-in: /health answers ``health``; /v1/* answers with its name, as the body's
    ``mode`` says: "hold" (until ``gate`` is set), "stream" (a chunk, then the rest once ``gate`` is
    set), "die" (a chunk of a stream, then the connection drops)."""

    def __init__(self, name: str):
        self.name, self.health, self.seen = name, 200, []
        self.gate = threading.Event()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._json(replica.health, {"status": "ready" if replica.health == 200 else "loading"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                replica.seen.append(
                    {"body": body, "authorization": self.headers.get("Authorization"), "headers": dict(self.headers)}
                )
                mode = body.get("mode", "")
                if mode == "hold":
                    replica.gate.wait(60)
                if mode in ("stream", "die"):
                    return self._stream(body, mode)
                self._json(
                    200,
                    {
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": replica.name},
                                     "finish_reason": "stop"}],
                    },
                )  # fmt: skip

            def _json(self, status, data):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _chunk(self, text: str):
                content = {"role": "assistant", "content": text}
                data = {
                    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                    "choices": [{"index": 0, "delta": content, "finish_reason": None}],
                }  # fmt: skip
                event = f"data: {json.dumps(data)}\n\n".encode()
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()

            def _stream(self, body, mode):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._chunk(replica.name)
                if mode == "die":  # a killed server: the connection drops mid-body
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                replica.gate.wait(60)
                self._chunk(" and the rest")
                done = b"data: [DONE]\n\n"
                self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replicas():
    made = []

    def make(name):
        made.append(FakeReplica(name))
        return made[-1]

    yield make
    for replica in made:
        replica.close()


def client(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway, api_key=key, max_retries=0, timeout=60)


def run(app, application, replica: FakeReplica, deploy_id=None) -> None:
    """Take the application to running at ``replica``, as a deploy does (the transitions publish its route)."""
    from llmapp.models import Replica
    from llmapp.services import lifecycle

    deploy_id = deploy_id or uuid.uuid4().hex
    address, port = replica.url.removeprefix("http://").rsplit(":", 1)
    with app.app_context():
        lifecycle.transition(application.id, "deploy", deploy_id=deploy_id)
        deployed = db.session.get(Application, application.id)
        deployed.replicas.clear()
        deployed.replicas.append(
            Replica(release=1, deploy_id=deploy_id, host="here", address=address, port=int(port), status="ready")
        )
        db.session.commit()
        lifecycle.transition(application.id, "deployed", endpoint=replica.url + "/v1", deployed_release=1)


def served_by(api, model, **extra) -> str:
    answer = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], extra_body=extra)
    return answer.choices[0].message.content


def key_of(app, application) -> str:
    from llmapp.services import api_keys

    with app.app_context():
        return api_keys.create_key(db.session.get(Application, application.id), "gateway")[1]


def test_a_key_reaches_its_own_application_only_and_the_table_follows_the_platform(
    app, factory, member, gateway, replicas
):
    from llmapp.services import lifecycle

    other = factory.user()
    model = factory.model()
    mine, theirs = factory.application(member, model, name="mine"), factory.application(other, model, name="theirs")
    my_replica, their_replica = replicas("my-replica"), replicas("their-replica")
    run(app, mine, my_replica)
    run(app, theirs, their_replica)
    my_key, their_key = key_of(app, mine), key_of(app, theirs)
    api = client(gateway, my_key)

    # The platform's own publishing reaches the running gateway: no restart, no database.
    assert wait_for(lambda: _served_or_none(api, "mine"), 30, 0.1, "the route of “mine”") == "my-replica"
    assert my_replica.seen[-1]["authorization"] == f"Bearer {my_key}"  # the replica checks the key again
    assert [m.id for m in api.models.list().data] == ["mine"]
    assert [m.id for m in client(gateway, their_key).models.list().data] == ["theirs"]
    assert api.models.retrieve("mine").id == "mine"

    # Another member's application looks like a missing one, by its name or through /v1/models/<name>.
    for call in (lambda: served_by(api, "theirs"), lambda: api.models.retrieve("theirs")):
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert refused.value.code == "model_not_found" and "does not exist" in refused.value.message
    assert their_replica.seen == []
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        served_by(client(gateway, "llm-not-a-key"), "mine")
    missing = httpx.post(gateway + "/chat/completions", json={"model": "mine"}, timeout=30)
    assert missing.status_code == 401 and "Missing API key" in missing.json()["error"]["message"]
    for body, message in ((b"{", "not valid JSON"), (b"[]", "JSON object"), (b"{}", "provide a model")):
        bad = httpx.post(gateway + "/chat/completions", content=body, headers={"Authorization": f"Bearer {my_key}"})
        assert bad.status_code == 400 and message in bad.json()["error"]["message"]
    unknown = httpx.get(gateway + "/files", headers={"Authorization": f"Bearer {my_key}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].startswith("Unknown request URL")

    # Stopping: a draining replica gets nothing new (503 saying why), then stopped.
    with app.app_context():
        lifecycle.transition(mine.id, "stop")
    refusal = wait_for(lambda: _refusal(api, "mine", "stopping"), 30, 0.1, "503 while stopping")
    assert refusal.status_code == 503 and refusal.response.headers["retry-after"] == "5"
    with app.app_context():
        lifecycle.transition(mine.id, "stopped", endpoint=None)
    refusal = wait_for(lambda: _refusal(api, "mine", "is stopped: deploy it"), 30, 0.1, "503 once stopped")
    assert refusal.code == "application_unavailable"

    # Deployed again elsewhere: the same base URL and key reach the new server.
    moved = replicas("moved")
    run(app, mine, moved)
    assert wait_for(lambda: _served_or_none(api, "mine"), 30, 0.1, "the new route") == "moved"

    # Deleted (stopped first): its key reaches nothing; the other member's application serves on.
    with app.app_context():
        lifecycle.transition(mine.id, "stop")
        lifecycle.transition(mine.id, "stopped")
        from llmapp.services import applications

        applications.delete(db.session.get(Application, mine.id))
    gone = wait_for(lambda: _refusal(api, "mine", "Incorrect API key"), 30, 0.1, "401 (after a cached answer's 2 s)")
    assert isinstance(gone, openai.AuthenticationError)
    assert served_by(client(gateway, their_key), "theirs") == "their-replica"


def _served_or_none(api, model):
    try:
        return served_by(api, model)
    except openai.APIStatusError:
        return None


def _refusal(api, model, words):
    try:
        served_by(api, model)
    except openai.APIStatusError as e:
        return e if words in e.message else None
    return None


def several(redis_url, *replicas, release=None) -> tuple[str, str, callable]:
    """An application of several replicas, with a key: (its id, the key, a republisher: draining names)."""
    application_id, key = uuid.uuid4().hex, runtime_keys.generate()
    connection = redis.Redis.from_url(redis_url)
    entries = {runtime_keys.digest(key): (1, "k")}
    runtime_keys.publish(connection, application_id, entries, application_key=APP_KEY, route_key=ROUTE_KEY)

    def republish(*draining, release=release):
        replicas_ = [{"id": r.name, "url": r.url, "draining": r.name in draining} for r in replicas]
        route = {"id": application_id, "name": "pool", "owner_id": 1, "status": "running", "release": release}
        publish_route(connection, {**route, "replicas": replicas_})

    republish()
    return application_id, key, republish


def test_least_requests_in_flight_first_never_a_draining_or_failing_replica(redis_url, gateway, replicas):
    one, two = replicas("one"), replicas("two")
    _, key, republish = several(redis_url, one, two, release=7)
    api = client(gateway, key)
    wait_for(lambda: _served_or_none(api, "pool"), 30, 0.1, "the pool's route")

    # Equal loads take turns; a replica holding a request gets the next one only after the other.
    assert {served_by(api, "pool") for _ in range(6)} == {"one", "two"}
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(served_by, api, "pool", mode="hold")
        wait_for(lambda: any(s["body"].get("mode") == "hold" for s in one.seen + two.seen), 30, 0.05, "a held request")
        busy = one if any(s["body"].get("mode") == "hold" for s in one.seen) else two
        free = two if busy is one else one
        assert [served_by(api, "pool") for _ in range(4)] == [free.name] * 4
        busy.gate.set()
        assert held.result(60) == busy.name

    # Every answer through the gateway names the release that served it.
    answer = api.chat.completions.with_raw_response.create(model="pool", messages=[{"role": "user", "content": "x"}])
    assert answer.headers["x-llmapp-release"] == "7"

    # Draining: nothing new goes there.
    republish("one")
    wait_for(lambda: all(served_by(api, "pool") == "two" for _ in range(4)), 30, 0.1, "only two")
    assert {served_by(api, "pool") for _ in range(8)} == {"two"}

    # Failing its health check: nothing new goes there either, until it answers again.
    republish()
    two.health = 503
    wait_for(lambda: all(served_by(api, "pool") == "one" for _ in range(4)), 30, 0.1, "only one")
    assert {served_by(api, "pool") for _ in range(8)} == {"one"}
    two.health = 200
    wait_for(lambda: "two" in {served_by(api, "pool") for _ in range(4)}, 30, 0.1, "two back")


def test_a_replica_that_refuses_the_connection_is_skipped_before_the_first_byte(redis_url, gateway, replicas):
    alive = replicas("alive")
    gone = FakeReplica("gone")
    gone.close()  # its port now refuses connections
    _, key, _ = several(redis_url, gone, alive)
    api = client(gateway, key)
    wait_for(lambda: _served_or_none(api, "pool"), 30, 0.1, "the pool's route")
    assert {served_by(api, "pool") for _ in range(10)} == {"alive"}  # not one failure


def test_streams_pass_through_chunk_by_chunk_and_a_replica_lost_mid_stream_ends_with_an_error(
    redis_url, gateway, replicas
):
    streamer = replicas("streamer")
    _, key, _ = several(redis_url, streamer)
    api = client(gateway, key)
    wait_for(lambda: _served_or_none(api, "pool"), 30, 0.1, "the pool's route")

    # The first chunk arrives while the replica still holds the rest: nothing is buffered whole.
    stream = api.chat.completions.create(
        model="pool", messages=[{"role": "user", "content": "x"}], stream=True, extra_body={"mode": "stream"}
    )
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.content == "streamer"
    streamer.gate.set()
    assert [c.choices[0].delta.content for c in chunks] == [" and the rest"]

    # A replica that dies mid-stream: the client gets an error event and the stream ends (no hang).
    stream = api.chat.completions.create(
        model="pool", messages=[{"role": "user", "content": "x"}], stream=True, extra_body={"mode": "die"}
    )
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.content == "streamer"
    with pytest.raises(openai.APIError, match="stopped answering"):
        next(chunks)


def test_what_a_server_or_a_client_could_forge_reaches_nothing(redis_url, gateway, replicas):
    """App servers can write to Redis, so the gateway follows only what the platform signed; a client's
    path, headers and body go nowhere but the application's own OpenAI endpoints."""
    victim, attacker = replicas("victim"), replicas("attacker")
    victim_id, key, _ = several(redis_url, victim)
    api = client(gateway, key)
    wait_for(lambda: _served_or_none(api, "pool"), 30, 0.1, "the pool's route")
    connection = redis.Redis.from_url(redis_url)

    # A route rewritten by a server (unsigned, or signed for another route) is not followed.
    forged = {"id": victim_id, "name": "pool", "owner_id": 1, "status": "running", "version": 9e12,
              "replicas": [{"id": "attacker", "url": attacker.url}]}  # fmt: skip
    stolen = connection.hget(keyspace.routes(), victim_id).decode().partition(".")[0]
    for value in (json.dumps(forged), stolen + "." + json.dumps(forged)):
        connection.hset(keyspace.routes(), victim_id, value)
        connection.publish(keyspace.routes_changed(), victim_id)
        assert {served_by(api, "pool") for _ in range(5)} == {"victim"}
    # A key pointed at another application by a server is no key at the gateway.
    own_key = runtime_keys.generate()
    connection.hset(keyspace.key_routes(), runtime_keys.digest(own_key), victim_id)
    with pytest.raises(openai.AuthenticationError):
        served_by(client(gateway, own_key), "pool")
    assert attacker.seen == []

    # Only the OpenAI endpoints, by their exact names: no way to the replica's other paths.
    bearer = {"Authorization": f"Bearer {key}"}
    for path in ("/%2e%2e/health", "/a%2F..%2F..%2Fmetrics", "/chat/completions%3Fx=1", "/chat/completions/.."):
        sent = httpx.post(gateway + path, json={"model": "pool"}, headers=bearer, timeout=30)
        assert sent.status_code == 404 and sent.json()["error"]["message"].startswith("Unknown request URL")
    before = len(victim.seen)
    # No key: refused before the body is read; a body over the servers' limit: 413 before it is read.
    assert httpx.post(gateway + "/chat/completions", content=b"x" * 1000, timeout=30).status_code == 401
    huge = httpx.post(gateway + "/chat/completions", content=b"{" * (5 * 1024 * 1024), headers=bearer, timeout=60)
    assert huge.status_code == 413 and huge.json()["error"]["message"].startswith("The request body is larger")
    deep = httpx.post(gateway + "/chat/completions", content=b"[" * 100_000, headers=bearer, timeout=30)
    assert deep.status_code == 400 and "not valid JSON" in deep.json()["error"]["message"]
    twice = httpx.post(
        gateway + "/chat/completions", json={"model": "pool"}, timeout=30,
        headers=[("Authorization", f"Bearer {key}"), ("Authorization", "Bearer llm-other")],
    )  # fmt: skip
    assert twice.status_code == 400 and "one Authorization header" in twice.json()["error"]["message"]
    assert len(victim.seen) == before  # none of these reached the replica
    served_by(api.with_options(default_headers={"Cookie": "session=platform-login"}), "pool")
    assert "cookie" not in {name.lower() for name in victim.seen[-1]["headers"]}
