"""Metrics of deployed applications: a known mix of requests counted the same in the pages, the API, the
CLI and Prometheus, and Prometheus's targets following deploys."""

import concurrent.futures
import json
from collections import Counter

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from conftest import HX, health_of, row, running_app, wait_for
from llmapp import keyspace


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
            return metrics_service.live(row(app, deployed.id))[0]

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


def prometheus_samples(endpoint: str, token: str) -> dict:
    text = httpx.get(endpoint.replace("/v1", "/metrics"), headers={"Authorization": f"Bearer {token}"}).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples
