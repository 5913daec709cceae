"""Monitoring: how counts are kept (unit), that two servers of one application add up exactly, and a
known mix of traffic seen the same in the stored series, the pane, the CLI and Prometheus."""

import asyncio
import concurrent.futures
import json
import time
from collections import Counter

import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from conftest import HX, ServedTiny, health_of, redis_database, row, running_app, wait_for
from llmapp import charts, keyspace
from llmapp.runtime import metrics

# --- the arithmetic -------------------------------------------------------------------------------


def test_percentiles_from_buckets_match_a_hand_computation():
    bounds = (0.1, 0.5, 1.0)
    # 10 requests: 2 at ≤ 0.1 s, 6 in (0.1, 0.5], 2 in (0.5, 1.0], none above.
    counts = [2, 6, 2, 0]
    # p50: rank 5 is the 3rd of the 6 in (0.1, 0.5] → 0.1 + 0.4 × 3/6 = 0.3
    assert metrics.percentile(bounds, counts, 0.5) == pytest.approx(0.3)
    # p95: rank 9.5 is 1.5 into the 2 of (0.5, 1.0] → 0.5 + 0.5 × 1.5/2 = 0.875
    assert metrics.percentile(bounds, counts, 0.95) == pytest.approx(0.875)
    # p10: rank 1 is halfway through the first bucket, which starts at 0 → 0.05
    assert metrics.percentile(bounds, counts, 0.10) == pytest.approx(0.05)
    assert metrics.percentile(bounds, [0, 0, 0, 3], 0.5) == 1.0  # in +Inf: its lower bound
    assert metrics.percentile(bounds, [0, 0, 0, 0], 0.5) is None  # no data is not zero


def test_one_requests_fields_and_the_aggregator():
    fields = metrics.request_fields(
        200, 0.3, "laptop", 12, 5, cache="MISS", ttft_s=0.02, tpot_s=0.004, stages={"parse": 0.001}
    )
    assert fields["n|2xx"] == 1 and fields[f"lat|{metrics.bucket_index(metrics.LATENCY_S, 0.3)}"] == 1
    assert fields["tok|in"] == 12 and fields["tok|out"] == 5 and fields["cache|miss"] == 1
    assert fields["key|laptop|n"] == 1 and fields["key|laptop|err"] == 0 and fields["stage|parse|n"] == 1
    refused = metrics.request_fields(429, 0.001, None)
    assert refused["n|429"] == 1 and "tok|out" not in refused and not any(k.startswith("key|") for k in refused)
    assert metrics.outcome(413) == "4xx" and metrics.outcome(503) == "5xx" and metrics.outcome(504) == "504"
    assert metrics.is_error("404") and not metrics.is_error("499") and not metrics.is_error("2xx")

    aggregator = metrics.Aggregator()
    aggregator.add({"n|2xx": 1, "lat|sum": 0.25}, at=1000.0)
    aggregator.add({"n|2xx": 1, "lat|sum": 0.5}, at=1009.9)
    aggregator.add({"n|2xx": 1}, at=1010.0)
    taken = aggregator.take()
    assert taken == {1000: Counter({"n|2xx": 2, "lat|sum": 0.75}), 1010: Counter({"n|2xx": 1})}
    aggregator.add({"n|2xx": 1}, at=1010.0)
    aggregator.give_back(taken)  # a failed flush: counted once, later
    assert aggregator.take()[1010]["n|2xx"] == 2


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


def test_charts_leave_gaps_where_there_is_no_data():
    points = [
        {"at": 0, "data": True, "requests_per_s": 1.0},
        {"at": 10, "data": False},
        {"at": 20, "data": True, "requests_per_s": 3.0},
        {"at": 30, "data": True, "requests_per_s": 0.0},
    ]
    chart = charts.line_chart("Requests", points, [("answered", "requests_per_s", "series-a")], charts.rate, 10)
    assert chart.lines[0].d.count("M") == 2  # broken at the point without data, not drawn down to zero
    assert [label for _, label in chart.y_ticks] == ["0/s", "2.5/s", "5/s"]
    assert chart.hovers[1][2].endswith("no data (not running)") and "answered 3/s" in chart.hovers[2][2]
    assert [charts.nice_ceiling(v) for v in (0.7, 3, 7, 120)] == [1, 5, 10, 200]


# --- two servers, one application -------------------------------------------------------------------


def series_total(connection, application_id, resolution="10s") -> Counter:
    total = Counter()
    for key in connection.scan_iter(match=f"llmapp:metrics:{application_id}:{resolution}:*"):
        total.update(metrics.decode(connection.hgetall(key)))
    return total


def test_two_server_processes_of_one_application_add_up_exactly(tiny_model_dir, redis_url, tmp_path):
    url = redis_database(redis_url, 14)
    first = ServedTiny(tiny_model_dir, url, tmp_path)
    second = ServedTiny(tiny_model_dir, url, tmp_path, app_id=first.app_id, flush=False)
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


def prometheus_samples(endpoint: str, token: str) -> dict:
    text = httpx.get(endpoint.replace("/v1", "/metrics"), headers={"Authorization": f"Bearer {token}"}).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_a_known_mix_is_counted_the_same_everywhere(app, client, auth, member, factory, tiny, workers, runner):
    workers.start(1)
    deployed, api, key = running_app(
        app, client, auth, member, factory, tiny, "mix", max_concurrency=2, timeout_s=3, cache_size=8
    )
    headers = {"Authorization": f"Bearer {key}"}
    completions = deployed.endpoint + "/completions"
    tokens_out = tokens_in = 0

    # 5 answered: 3 identical temperature-0 requests (a miss, then 2 hits) and 2 sampled ones (misses).
    for temperature in (0, 0, 0, 1, 1):
        answer = api.completions.create(model="mix", prompt="hello", max_tokens=3, temperature=temperature)
        tokens_out += answer.usage.completion_tokens
        tokens_in += answer.usage.prompt_tokens
    # 2 requests that run past the 3 s timeout (504), holding both slots; meanwhile 3 more are refused (429).
    slow = {"model": "mix", "prompt": "hi", "max_tokens": 6000, "min_tokens": 6000}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(httpx.post, completions, json=slow, headers=headers, timeout=60) for _ in range(2)]
        wait_for(lambda: health_of(deployed)["in_flight"] == 2, 30, 0.02)
        refused = [httpx.post(completions, json={"model": "mix", "prompt": "x"}, headers=headers) for _ in range(3)]
        assert [r.status_code for r in refused] == [429] * 3
        assert sorted(h.result().status_code for h in holders) == [504, 504]
    # What the pages show as in flight is asked of the server with the platform's token (a number, not "—").
    from llmapp.services import metrics as metrics_service

    def shown_in_flight():
        with app.app_context():
            return metrics_service.in_flight(row(app, deployed.id))

    wait_for(lambda: shown_in_flight() == 0, 30, 0.1, "in flight, as the pages show it")
    # One stream whose client leaves after its first event (499), and one each of 400, 401 and 404.
    with httpx.stream("POST", completions, json={**slow, "stream": True}, headers=headers, timeout=60) as stream:
        next(stream.iter_lines())
    assert httpx.post(completions, json={"model": "mix", "prompt": ""}, headers=headers).status_code == 400
    assert httpx.post(completions, json={"model": "mix", "prompt": "x"}).status_code == 401
    assert httpx.post(completions, json={"model": "other", "prompt": "x"}, headers=headers).status_code == 404
    expected = {"2xx": 5, "400": 1, "401": 1, "404": 1, "4xx": 0, "429": 3, "499": 1, "5xx": 0, "504": 2}

    def report():
        with app.app_context():
            found = metrics_service.report(row(app, deployed.id), "15m")
        return found if found["requests"] == 14 else None

    stored = wait_for(report, 30, 0.2, "the mix in the stored series")
    assert stored["outcomes"] == expected and stored["errors"] == 8  # all but the 5 answers and the 499
    # Cache: 2 hits; misses are the 3 other plain answers and the 2 plain requests that timed out.
    assert stored["cache"] == {"hits": 2, "misses": 5, "hit_rate": 2 / 7}
    assert stored["tokens"] == {"input": tokens_in, "output": tokens_out}
    (mine,) = stored["keys"]
    assert mine["label"] == "test" and mine["requests"] == 13 and mine["errors"] == 7  # the 401 had no key
    assert mine["output_tokens"] == tokens_out
    assert stored["latency_s"]["p99"] >= 2.5  # the two 504s took at least the 3 s timeout
    assert stored["ttft_s"]["p50"] is not None  # the stream's first token was timed
    assert set(stored["stages"]) >= {"authenticate", "parse", "admit", "prepare", "generate"}
    assert stored["stages"]["authenticate"]["calls"] == 14
    assert stored["stages"]["generate"]["calls"] == 6  # not for the 2 cache hits

    # The pane shows the same numbers.
    pane = client.get(f"/applications/{deployed.id}/monitoring?window=15m", headers=HX).text
    for outcome, count in expected.items():
        assert f'data-outcome="{outcome}">{count}<' in pane
    assert "<dd>14</dd>" in pane and "2 hits · 5 misses" in pane and "<svg" in pane

    # The CLI's JSON is the same report.
    result = runner.invoke(args=["apps", "metrics", "mix", "--window", "15m", "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.output)
    assert cli["outcomes"] == expected and cli["tokens"] == stored["tokens"] and cli["cache"] == stored["cache"]
    text = runner.invoke(args=["apps", "metrics", "mix", "--window", "15m"]).output
    assert "2xx=5" in text and "429=3" in text and "504=2" in text

    # Prometheus, parsed with prometheus_client's own parser, counts the same requests.
    with app.app_context():
        token = metrics_service.metrics_token()
    samples = prometheus_samples(deployed.endpoint, token)
    by_outcome = Counter()
    for (name, labels), value in samples.items():
        if name == "llmapp_requests_total":
            by_outcome[dict(labels)["outcome"]] += value
    assert {k: v for k, v in by_outcome.items() if v} == {k: v for k, v in expected.items() if v}
    durations = sum(v for (name, _), v in samples.items() if name == "gen_ai_server_request_duration_seconds_count")
    assert durations == 14
    assert samples[("llmapp_tokens_total", (("api_key", "test"), ("gen_ai_token_type", "output")))] == tokens_out
    assert samples[("llmapp_cache_lookups_total", (("result", "hit"),))] == 2
    assert httpx.get(deployed.endpoint.replace("/v1", "/metrics")).status_code == 401  # not without the token
    assert httpx.get(deployed.endpoint.replace("/v1", "/metrics"), headers=headers).status_code == 401  # nor an app key


def test_prometheus_targets_follow_deploys(app, client, auth, member, factory, tiny, workers):
    from llmapp.services import metrics as metrics_service

    with app.app_context():
        token = metrics_service.metrics_token()
    assert client.get("/prometheus/targets").status_code == 401
    assert client.get("/prometheus/targets", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth.login(member)
    assert client.get("/prometheus/targets").status_code == 401  # a session is not the token
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/prometheus/targets", headers=bearer).json == []
    workers.start(1)
    deployed, _, _ = running_app(app, client, auth, member, factory, tiny, "scraped")
    (target,) = client.get("/prometheus/targets", headers=bearer).json
    assert target["targets"] == [deployed.endpoint.removeprefix("http://").removesuffix("/v1")]
    assert target["labels"]["application"] == "scraped" and target["labels"]["application_id"] == str(deployed.id)
    # Stopping keeps the history; deleting removes it. (The history of an application without traffic
    # is the reconcile's resource samples: wait for the first, however busy the machine.)
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    series = wait_for(
        lambda: list(connection.scan_iter(match=keyspace.metrics_pattern(deployed.id))), 90, 0.2, "series"
    )
    client.post(f"/applications/{deployed.id}/stop", headers=HX)
    wait_for(lambda: row(app, deployed.id).status == "stopped", 30, 0.2)
    assert client.get("/prometheus/targets", headers=bearer).json == []
    assert set(series) <= set(connection.scan_iter(match=keyspace.metrics_pattern(deployed.id)))
    assert client.post(f"/applications/{deployed.id}/delete", headers=HX).status_code == 200
    assert list(connection.scan_iter(match=keyspace.metrics_pattern(deployed.id))) == []


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
        (failing, {"n|2xx": 2, "n|5xx": 7}),
        (other, {"n|2xx": 100}),
    ):
        metrics.write(connection, str(application.id), {int(now // 10 * 10): Counter(fields)})
    fragment = logged_in.get("/applications/overview").text
    assert asyncio.iscoroutinefunction(metrics.write_async)
    busiest = fragment.split("Busiest, last hour")[1].split("Most errors")[0]
    assert busiest.index("busy") < busiest.index("failing") and "not-mine" not in fragment
    assert "41 requests" in busiest and "7 errors" in fragment.split("Most errors")[1]
    assert 'href="/applications/?status=running"' in fragment
