"""Monitoring: how counts are kept (unit), that two servers of one application add up exactly, and a
known mix of traffic seen the same in the stored series, the pane, the CLI and Prometheus."""

import asyncio
import concurrent.futures
import time
from collections import Counter

import httpx
import openai
import redis

from conftest import HX, ServedTiny, redis_database, wait_for
from llmapp import keyspace
from llmapp.runtime import metrics

# --- the arithmetic -------------------------------------------------------------------------------


def test_writes_add_up_in_every_resolution_and_expire(redis_url):
    connection = redis.Redis.from_url(redis_database(redis_url, 13))
    connection.flushdb()
    start = 1_700_000_000 // 3600 * 3600
    for bucket in (start, start + 10, start + 70):
        metrics.write(connection, "app-x", {bucket: Counter({"n|2xx": 2, "lat|sum": 0.125, "stage|parse": 0.5})})
    ten = metrics.decode(connection.hgetall(keyspace.metrics("app-x", "10s", start)))
    minute = metrics.decode(connection.hgetall(keyspace.metrics("app-x", "1m", start)))
    hour = metrics.decode(connection.hgetall(keyspace.metrics("app-x", "1h", start)))
    assert ten == {"n|2xx": 2, "lat|sum": 0.125, "stage|parse": 0.5}
    assert minute["n|2xx"] == 4 and minute["lat|sum"] == 0.25
    assert hour["n|2xx"] == 6 and hour["lat|sum"] == 0.375 and hour["stage|parse"] == 1.5
    assert 3600 < connection.ttl(keyspace.metrics("app-x", "10s", start)) <= 3610
    assert 30 * 86400 < connection.ttl(keyspace.metrics("app-x", "1h", start)) <= 30 * 86400 + 3600
    overview = connection.hgetall(keyspace.metrics_overview(start))
    assert overview == {b"app-x|n": b"4"}  # the two buckets of that minute


# --- two servers, one application -------------------------------------------------------------------


def series_total(connection, application_id, resolution="10s") -> Counter:
    total = Counter()
    for key in connection.scan_iter(match=f"llmapp:metrics:{application_id}:{resolution}:*"):
        total.update(metrics.decode(connection.hgetall(key)))
    return total


def test_two_server_processes_of_one_application_add_up_exactly(tiny_model_dir, redis_url, tmp_path):
    url = redis_database(redis_url, 14)
    first = ServedTiny(tiny_model_dir, url, tmp_path)
    second = ServedTiny(tiny_model_dir, url, tmp_path, app_id=first.app_id, flush=False, chain_key=first.chain_key)
    try:
        tokens = 0

        def call(server, i):
            answer = openai.OpenAI(base_url=server.url, api_key=server.KEY, max_retries=0).completions.create(
                model=server.NAME, prompt=f"hello {i}", max_tokens=1 + i % 4
            )
            return answer.usage.completion_tokens

        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # each server serves 2 at once
            tokens += sum(pool.map(lambda i: call(first, i), range(7)))
            tokens += sum(pool.map(lambda i: call(second, i), range(5)))
        assert (
            httpx.post(second.url + "/completions", json={}, headers={"Authorization": "Bearer no"}).status_code == 401
        )

        def stored():
            total = series_total(first.redis, first.app_id)
            return total if sum(v for k, v in total.items() if k.startswith("n|")) == 13 else None

        total = wait_for(stored, 30, 0.2, "both servers' counts")
        assert total["n|2xx"] == 12 and total["n|401"] == 1 and total["tok|out"] == tokens
        assert sum(metrics.histogram(total, "lat")) == 13  # every request in exactly one bucket
        assert total["key|tests|n"] == 12
        assert series_total(first.redis, first.app_id, "1h")["n|2xx"] == 12  # the same in every resolution
    finally:
        first.stop()
        second.stop()


# --- a known mix through the whole platform ------------------------------------------------------


def test_another_members_metrics_are_404(app, client, auth, factory, member, runner):
    other = factory.user("other@example.com")
    theirs = factory.application(other, factory.model(), name="theirs")
    auth.login(member)
    assert client.get(f"/applications/{theirs.id}/monitoring").status_code == 404
    assert client.get(f"/applications/{theirs.id}/monitoring", headers=HX).status_code == 404
    refused = runner.invoke(args=["apps", "metrics", "theirs", "--as", member.email])
    assert refused.exit_code != 0 and "No application named “theirs”." in refused.output
    assert runner.invoke(args=["apps", "metrics", "theirs", "--as", other.email, "--json"]).exit_code == 0


def test_an_application_without_traffic_says_so_instead_of_showing_zeros(logged_in, factory, member):
    application = factory.application(member, factory.model(), name="quiet")
    pane = logged_in.get(f"/applications/{application.id}/monitoring?window=24h", headers=HX).text
    assert "No traffic and no resource samples in the last 24 hours" in pane and "<svg" not in pane
    page = logged_in.get(f"/applications/{application.id}/monitoring?window=7d").text
    assert "<h1>" in page and 'aria-current="true">7d<' in page  # the whole page, on the 7 d window
    assert 'hx-trigger="load"' in logged_in.get(f"/applications/{application.id}").text  # the pane loads itself


def test_the_app_center_overview(logged_in, factory, member, app, redis_url):
    model = factory.model()
    busy = factory.application(member, model, name="busy", status="running")
    failing = factory.application(member, model, name="failing", status="failed")
    factory.application(member, model, name="idle")
    other = factory.application(factory.user("x@example.com"), model, name="not-mine")
    connection = redis.Redis.from_url(redis_url)
    now = time.time()
    for application, fields in (
        (busy, {"n|2xx": 40, "n|504": 1}),
        (failing, {"n|2xx": 2, "n|5xx": 1}),
        (other, {"n|2xx": 100}),
    ):
        metrics.write(connection, str(application.id), {int(now // 10 * 10): Counter(fields)})
    fragment = logged_in.get("/applications/overview").text
    assert asyncio.iscoroutinefunction(metrics.write_async)
    busiest = fragment.split("Busiest, last hour")[1].split("Most errors")[0]
    assert busiest.index("busy") < busiest.index("failing") and "not-mine" not in fragment
    assert "41 requests" in busiest and "1 error<" in fragment.split("Most errors")[1]  # not "1 errors"
    assert 'href="/applications/?status=running"' in fragment
    # A status none is in does not spin; one that some application is in does.
    deploying = fragment.split('href="/applications/?status=deploying"')[1].split("</a>")[0]
    assert "spinner" not in deploying and "<strong>0</strong>" in deploying
    factory.application(member, model, name="on-its-way", status="deploying")
    fragment = logged_in.get("/applications/overview").text
    assert "spinner" in fragment.split('href="/applications/?status=deploying"')[1].split("</a>")[0]


def test_the_pane_shows_each_release_through_the_gateway_side_by_side(logged_in, factory, member, app, redis_url):
    """What gateways count per release (a canary beside the release deployed) is summed across gateways
    and shown per release: requests, their share, errors and latency."""
    application = factory.application(member, factory.model(), name="split", status="running")
    with app.app_context():
        from llmapp.extensions import db
        from llmapp.models import Application

        row = db.session.get(Application, application.id)
        row.deployed_release, row.canary_release, row.canary_percent = 1, 2, 20
        db.session.commit()
    connection = redis.Redis.from_url(redis_url)
    bucket = int(time.time() // 10 * 10)
    for _ in range(2):  # two gateways' flushes add up
        counted = Counter()
        for release, status, seconds, times in ((1, 200, 0.02, 30), (2, 200, 0.3, 8), (2, 502, 0.01, 2)):
            for _ in range(times):
                metrics.combine(counted, metrics.release_fields(release, status, seconds))
        metrics.write(connection, str(application.id), {bucket: counted})
    pane = logged_in.get(f"/applications/{application.id}/monitoring?window=15m", headers=HX).text
    table = pane.split('aria-label="Requests by release"')[1].split("</table>")[0]
    deployed, canary = table.split('data-release="1"')[1].split('data-release="2"')
    assert "deployed" in deployed and ">60<" in deployed and "75.0 %" in deployed  # 60 of 80 requests
    assert ">0<" in deployed and "17.5 ms" in deployed  # no error; p50 interpolated in the 10–25 ms bucket
    assert "canary" in canary and ">20<" in canary and "25.0 %" in canary  # 20 of 80
    assert ">4<" in canary and "20.0 %" in canary  # 4 errors of 20


def test_percentiles_never_exceed_the_slowest_request_and_say_how_many_they_rest_on(app, factory, member, redis_url):
    """Six requests, the slowest 12.4 s: interpolating inside the 10-30 s bucket read p95 24 s and p99
    28.8 s. Each flush keeps the slowest it saw (the larger one wins in Redis, whichever comes last)."""
    from llmapp.services import metrics as metrics_service

    application = factory.application(member, factory.model(), name="slow", status="running")
    connection = redis.Redis.from_url(redis_url)
    bucket = int(time.time() // 10 * 10)
    for seconds in ((0.2, 0.3, 12.4), (0.25, 0.4, 11.0)):  # two flushes; the second's slowest is faster
        aggregator = metrics.Aggregator()
        for spent in seconds:
            aggregator.add(metrics.request_fields(200, spent, None), at=bucket)
        metrics.write(connection, str(application.id), aggregator.take())
    stored = metrics.decode(connection.hgetall(keyspace.metrics(str(application.id), "10s", bucket)))
    assert stored["lat|max"] == 12.4 and stored["n|2xx"] == 6
    with app.app_context():
        from llmapp.extensions import db
        from llmapp.models import Application

        report = metrics_service.report(db.session.get(Application, application.id), "15m")
    latency = report["latency_s"]
    assert latency["samples"] == 6
    assert latency["p95"] == latency["p99"] == 12.4  # not 24 and 28.8
    assert latency["p50"] < 0.5
