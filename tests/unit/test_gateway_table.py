"""The gateway's routing table: which replica a request goes to, and what a reload keeps."""

import json

import pytest

from llmapp.gateway.table import (
    Replica,
    Route,
    RoutingTable,
    application_of_key,
    key_route,
    parse_route,
    route_key,
    sign,
)


def route(*replicas, status="running") -> Route:
    return Route("app", "chat", 1, status, None, list(replicas))


def test_least_requests_in_flight_first_and_equal_loads_take_turns():
    table = RoutingTable()
    a, b, c = Replica("a", "http://a"), Replica("b", "http://b"), Replica("c", "http://c")
    pool = route(a, b, c)
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    assert [r.id for r in table.candidates(pool)] == ["b", "c", "a"]
    a.in_flight = b.in_flight = c.in_flight = 0
    assert {table.candidates(pool)[0].id for _ in range(3)} == {"a", "b", "c"}


def test_draining_unhealthy_and_tried_replicas_get_no_new_request():
    table = RoutingTable()
    draining = Replica("d", "http://d", draining=True)
    sick, unknown, tried = Replica("s", "http://s"), Replica("u", "http://u"), Replica("t", "http://t")
    sick.healthy = False
    candidates = table.candidates(route(draining, sick, unknown, tried), tried=[tried])
    assert [r.id for r in candidates] == ["u"]  # not yet checked: asked before its first request
    assert table.candidates(route(draining)) == []
    assert table.candidates(route(draining, sick)) == [sick]  # the only one left answers for itself


def test_a_reload_keeps_what_the_gateway_knows_of_a_replica_that_is_still_there():
    table = RoutingTable()
    first = route(Replica("a", "http://a"), Replica("b", "http://b"))
    table.put(first, "app")
    first.replicas[0].in_flight, first.replicas[0].healthy = 3, True
    reloaded = route(Replica("a", "http://a", draining=True), Replica("b", "http://elsewhere"))
    table.put(reloaded, "app")
    kept, moved = table.routes["app"].replicas
    assert (kept.in_flight, kept.healthy, kept.draining) == (3, True, True)  # same replica, now draining
    assert (moved.in_flight, moved.healthy) == (0, None)  # another address: a new replica
    table.put_all({})  # an entry gone from Redis (a server may delete it) is not a deletion
    assert list(table.routes) == ["app"]
    table.put(Route("app", "chat", 1, "deleted"), "app")  # the platform's tombstone is
    assert table.routes == {}


def test_only_running_routes_replicas_are_health_checked():
    table = RoutingTable()
    table.put(route(Replica("a", "http://a")), "running")
    table.put(Route("stopping", "x", 1, "stopping", None, [Replica("b", "http://b")]), "stopping")
    assert [r.id for r in table.replicas()] == ["a"]


def test_a_published_route_is_read_and_a_broken_one_refused():
    parsed = parse_route(
        json.dumps(
            {"id": "app", "name": "chat", "owner_id": 3, "status": "running", "release": 4,
             "replicas": [{"id": "r1", "url": "http://h:1", "draining": False}]}
        )
    )  # fmt: skip
    assert (parsed.name, parsed.owner_id, parsed.release, parsed.replicas[0].url) == ("chat", 3, 4, "http://h:1")
    for broken in ('{"id": "app"}', '{"id": "a", "name": "n", "owner_id": 1, "status": "running", "replicas": [{}]}'):
        with pytest.raises(ValueError):
            parse_route(broken)


def test_only_what_the_platform_signed_routes_anything():
    key, other = route_key("platform secret"), route_key("another secret")
    text = json.dumps({"id": "a", "name": "chat", "owner_id": 1, "status": "running", "replicas": []})
    assert parse_route(sign(key, text), key).name == "chat"
    for forged in (text, sign(other, text), sign(key, text).replace("chat", "evil")):
        with pytest.raises(ValueError, match="not signed"):
            parse_route(forged, key)
    entry = key_route(key, "digest-1", "app-a")
    assert application_of_key(key, "digest-1", entry) == "app-a"
    assert application_of_key(key, "digest-2", entry) is None  # not another key's entry
    assert application_of_key(key, "digest-1", entry.replace("app-a", "app-b")) is None
    assert application_of_key(key, "digest-1", "app-a") is None


def test_one_failed_health_check_is_a_blip_two_exclude_and_a_first_one_excludes_at_once():
    replica = Replica("a", "http://a")
    replica.checked(False)
    assert replica.healthy is False  # never known healthy: nothing before it answers
    replica.checked(True)
    replica.checked(False)
    assert replica.healthy is True
    replica.checked(False)
    assert replica.healthy is False
    table = RoutingTable()
    assert table.candidates(route(replica)) == [replica]  # all unhealthy: they answer for themselves


def test_a_canary_route_draws_each_request_s_release_by_the_weights():
    table = RoutingTable()
    table._random.seed(7)  # a fixed draw: the bounds below hold for any, this keeps the test repeatable
    stable = [Replica("a", "http://a", release=1), Replica("b", "http://b", release=1)]
    canary = Replica("c", "http://c", release=2)
    pool = Route("app", "chat", 1, "running", 1, [*stable, canary], {1: 80, 2: 20})
    drawn = [table.candidates(pool)[0].release for _ in range(10_000)]
    assert 1_850 <= drawn.count(2) <= 2_150  # 2,000 expected; 40 is one standard deviation
    assert {r.release for r in table.candidates(pool, tried=[canary])} == {1}  # a retry: any that answers
    pool.weights = {1: 100, 2: 0}  # an abort: none at all
    assert {table.candidates(pool)[0].release for _ in range(500)} == {1}
    pool.weights = {1: 0, 2: 100}
    canary.healthy = False  # the drawn release has no healthy replica: another answers
    assert {table.candidates(pool)[0].release for _ in range(50)} == {1}


def test_a_route_s_weights_and_each_replica_s_release_are_read_from_what_the_platform_published():
    published = {
        "id": "app", "name": "chat", "owner_id": 1, "status": "running", "release": 3, "version": 1,
        "weights": {"3": 90, "4": 10},
        "replicas": [{"id": "a", "url": "http://a", "release": 3}, {"id": "b", "url": "http://b", "release": 4},
                     {"id": "c", "url": "http://c"}],
    }  # fmt: skip
    parsed = parse_route(json.dumps(published))
    assert parsed.weights == {3: 90, 4: 10}
    assert [r.release for r in parsed.replicas] == [3, 4, 3]  # one without its own: the route's release
