"""Hosts (services/hosts.py) on the real Redis and database: announcements on Redis's clock, up and down,
placement by engine, memory and pin (and the reason when nothing fits), the recovery of a down host's
replicas, and the Hosts page, API and CLI. The two-host test that crosses a real network is
tests/e2e/test_two_hosts.py."""

import json

import pytest
import redis

from conftest import HX, bearer, token_for
from llmapp import keyspace, queues
from llmapp.extensions import db
from llmapp.models import Application, Replica
from llmapp.services import ServiceError, deployments, hosts, lifecycle

GIB = 2**30


def host(app, name, memory_gib=16.0, engines=(), seconds_ago=0.0, address="10.0.0.9"):
    """Announce ``name`` as its worker would, ``seconds_ago`` (on Redis's clock)."""
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    seconds, micros = connection.time()
    facts = {
        "name": name, "address": address, "cpus": 8, "memory_bytes": int(64 * GIB),
        "memory_available_bytes": int(memory_gib * GIB), "gpus": [], "engines": list(engines),
        "heartbeat": seconds + micros / 1e6 - seconds_ago,
    }  # fmt: skip
    connection.set(keyspace.host(name), json.dumps(facts))
    connection.sadd(keyspace.hosts(), name)


@pytest.fixture
def gguf(factory, tmp_path):
    """A llama.cpp model of about 2 GiB (the file's size is what it needs)."""
    path = tmp_path / "model.gguf"
    with open(path, "wb") as f:
        f.write(b"GGUF")
        f.truncate(2 * GIB)
    return factory.model(name="small-gguf", engine="llama.cpp", source=str(path), parameters_billions=1)


def test_hosts_are_up_while_they_announce_and_down_after(app):
    app.config["HOST_DOWN_AFTER_S"] = 30
    host(app, "fresh")
    host(app, "silent", seconds_ago=31)
    with app.app_context():
        hosts.announce()  # this test's own host, as its worker would
        found = {h.name: h for h in hosts.known()}
    assert found["fresh"].up and not found["silent"].up and found["silent"].seconds_since >= 31
    with app.app_context():
        mine = found[queues_host(app)]
    assert mine.up and mine.cpus >= 1 and mine.memory_bytes > 0 and mine.address == app.config["ADVERTISE_HOST"]


def queues_host(app) -> str:
    with app.app_context():
        return queues.this_host()


def test_a_deploy_goes_where_the_engine_and_the_memory_are(app, member, factory, gguf):
    application = factory.application(member, gguf, name="placed", config={"batch_size": 1, "replicas": 1})
    host(app, "no-engine", memory_gib=60)
    host(app, "too-small", memory_gib=1, engines=["llama.cpp"])
    host(app, "fits", memory_gib=8, engines=["llama.cpp"])
    host(app, "down-but-big", memory_gib=60, engines=["llama.cpp"], seconds_ago=120)
    with app.app_context():
        row = db.session.get(Application, application.id)
        assert hosts.place(row) == "fits"
        deploy_id = deployments.request_deploy(row)
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    queued = [job.decode() for job in connection.lrange("rq:queue:" + queues.host_queue_name("fits"), 0, -1)]
    assert f"deploy-{deploy_id}" in queued  # the job waits on that host's own queue


def test_a_deploy_that_fits_nowhere_or_on_a_down_pin_is_refused_with_why(app, member, factory, gguf):
    application = factory.application(member, gguf, name="huge", config={"batch_size": 1, "replicas": 8})
    host(app, "big", memory_gib=12, engines=["llama.cpp"])
    host(app, "other", memory_gib=4, engines=[])
    with app.app_context():
        row = db.session.get(Application, application.id)
        with pytest.raises(ServiceError) as nowhere:
            deployments.request_deploy(row)
        assert lifecycle.STOPPED == db.session.get(Application, application.id).status  # nothing changed
    message = str(nowhere.value)
    assert "huge fits on no host: it needs" in message and "GiB of memory and the llama.cpp engine" in message
    assert "the biggest host that is up, big, has 12.0 GiB free, engines: llama.cpp" in message
    with app.app_context():
        row = db.session.get(Application, application.id)
        row.config = {**row.config, "replicas": 1, "host": "gone"}
        db.session.commit()
        with pytest.raises(ServiceError, match="pinned to the host gone, which is not up"):
            hosts.place(row)
        row.config = {**row.config, "host": "big"}
        db.session.commit()
        assert hosts.place(row) == "big"


def test_a_down_hosts_replicas_are_lost_and_their_application_placed_again(app, member, factory, tiny):
    app.config["HOST_DOWN_AFTER_S"] = 30
    application = factory.application(member, tiny, name="moved", status="running", config={"replicas": 1})
    host(app, "gone-host", seconds_ago=90)
    host(app, "alive", memory_gib=32)
    with app.app_context():
        db.session.add(
            Replica(
                application_id=application.id,
                release=1,
                deploy_id="d1",
                status="ready",
                host="gone-host",
                address="10.0.0.8",
                pid=123456,
                port=18123,
            )  # fmt: skip
        )
        db.session.commit()
        summary = hosts.recover()
        row = db.session.get(Application, application.id)
        assert summary == {"lost": 1, "restarted": 1, "failed": 0}
        assert (
            row.replicas == []
            and row.status == lifecycle.DEPLOYING
            and "gone-host is down" in row.restarts[-1]["reason"]
        )
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    name = queues.host_queue_name("alive")  # placed on the host that is up (after the restart's back-off)
    assert connection.llen(f"rq:queue:{name}") + connection.zcard(f"rq:scheduled:{name}") == 1


def test_the_hosts_page_api_and_cli_show_hosts_and_their_replicas(
    app, client, auth, admin, member, factory, tiny, runner
):
    application = factory.application(member, tiny, name="on-b", status="running")
    host(app, "host-b", address="10.1.2.3")
    with app.app_context():
        db.session.add(Replica(application_id=application.id, release=2, deploy_id="d", status="ready",
                               host="host-b", address="10.1.2.3", pid=1, port=18001))  # fmt: skip
        db.session.commit()
    listed = json.loads(runner.invoke(args=["hosts", "list", "--json"]).output)
    b = next(h for h in listed if h["name"] == "host-b")
    assert b["address"] == "10.1.2.3" and b["up"] is True
    assert b["replicas"] == [{"application": "on-b", "release": 2, "status": "ready", "port": 18001}]
    auth.login(member)
    assert client.get("/hosts/").status_code == 403
    assert client.get("/api/v1/hosts", headers=bearer(token_for(app, member))).status_code == 403
    auth.logout()
    auth.login(admin)
    page = client.get("/hosts/").text
    assert 'data-host="host-b"' in page and "10.1.2.3" in page and "on-b" in page
    assert client.get("/hosts/", headers=HX).text.startswith('<div class="card table-card" id="hosts"')
    api = client.get("/api/v1/hosts", headers=bearer(token_for(app, admin))).get_json()["items"]
    assert any(h["name"] == "host-b" and h["replicas"][0]["application"] == "on-b" for h in api)


def test_a_pin_is_checked_at_its_field(app, client, logged_in, factory):
    from test_applications import form_data

    model = factory.model()
    bad = logged_in.post("/applications/new", data=form_data(model, host="bad host!"), headers=HX)
    assert bad.status_code == 422 and "A host&#39;s name: letters, digits" in bad.text
    assert logged_in.post("/applications/new", data=form_data(model, host="gpu-1")).status_code == 303
