"""Quotas and usage on a deployed application, end to end: limits set from the CLI hold against bursts
from several processes at once, through the gateway and straight to the replica alike; streamed and
abandoned requests cost what they generated; a cache hit costs a request and no tokens; and the usage
the CLI, the API, the page and the CSV report equals exactly what the clients were told."""

import csv
import io
import json
import subprocess
import sys
import time
import uuid

import httpx
import redis

from conftest import running_app, wait_for
from llmapp import keyspace

# Each process waits for the same moment, then sends its requests at once (threads), and prints each
# answer's status, error and headers as JSON.
BURST = """
import concurrent.futures, json, sys, time, httpx
url, key, count, at, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), json.loads(sys.argv[5])
time.sleep(max(0, at - time.time()))
def call(_):
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer " + key}, timeout=120)
    return {"status": r.status_code, "body": r.json(), "headers": dict(r.headers)}
with concurrent.futures.ThreadPoolExecutor(count) as pool:
    print(json.dumps(list(pool.map(call, range(count)))))
"""


def burst(urls: list[str], key: str, per_process: int, body: dict) -> tuple[list[dict], float]:
    """``per_process`` requests from each of len(urls) processes (one per URL), all at once: the
    answers, and the seconds from the moment they were sent to the last answer."""
    at = time.time() + 3  # time for every process to start and import httpx
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BURST, url, key, str(per_process), str(at), json.dumps(body)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    answers = []
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        answers += json.loads(out)
    return answers, time.time() - at


def cli_json(runner, *args) -> dict:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def day_counter(app, key_id) -> int:
    """What the key's daily budget has counted today (Redis's day, as the script reckons it)."""
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    seconds, _ = connection.time()
    return int(connection.get(f"{keyspace.quota('key', key_id, 'day')}:{seconds // 86400}") or 0)


def test_limits_hold_and_usage_counts_exactly(app, client, auth, member, factory, tiny, workers, runner, gateway):
    workers.start(1)
    name = "metered"
    deployed, api, plain_key = running_app(
        app, client, auth, member, factory, tiny, name, max_concurrency=32, batch_size=8, cache_size=16
    )
    direct = deployed.endpoint + "/completions"
    through_gateway = gateway + "/completions"
    told = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0}

    def count(usage: dict, cached=False) -> None:
        told["requests"] += 1
        if cached:
            told["cached_tokens"] += usage["prompt_tokens"] + usage["completion_tokens"]
        else:
            told["input_tokens"] += usage["prompt_tokens"]
            told["output_tokens"] += usage["completion_tokens"]

    # The prompt's size, from a key without limits (its usage counts too).
    forced = {"model": name, "prompt": "hello there", "max_tokens": 4, "min_tokens": 4, "temperature": 1}
    probe = httpx.post(direct, json=forced, headers={"Authorization": f"Bearer {plain_key}"}, timeout=60)
    assert probe.status_code == 200 and "x-ratelimit-limit-requests" not in probe.headers  # no limit: none to state
    count(probe.json()["usage"])
    cost = probe.json()["usage"]["prompt_tokens"] + 4  # what each forced request reserves, and uses

    # A daily budget of 3½ requests' tokens: from 4 processes × 4 requests at once, half through the
    # gateway, exactly 3 are served; the others get 429 in OpenAI's shape, naming the limit.
    budget = cli_json(
        runner,
        "apps",
        "keys",
        "create",
        name,
        "--label",
        "burst",
        "--daily-tokens",
        str(3 * cost + cost // 2),
        "--json",
    )
    assert budget["limits"]["day"] == 3 * cost + cost // 2
    answers, _ = burst([direct, through_gateway] * 2, budget["key"], 4, forced)
    served = [a for a in answers if a["status"] == 200]
    refused = [a for a in answers if a["status"] == 429]
    assert len(served) == 3 and len(refused) == 13, [a["status"] for a in answers]
    for answer in refused:
        error = answer["body"]["error"]
        assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
        assert f"key burst: {3 * cost + cost // 2:,} tokens per day" in error["message"]
        assert 1 <= int(answer["headers"]["retry-after"]) <= 86400
    for answer in served:
        count(answer["body"]["usage"])
    assert day_counter(app, budget["id"]) == 3 * cost

    # 4 requests per minute: from 4 processes × 3 requests at once, 4 are served (and one more for each
    # 15 s the burst took, as the bucket refills); every answer states the limit and what is left.
    rpm = cli_json(runner, "apps", "keys", "create", name, "--label", "rpm", "--rpm", "4", "--json")
    answers, took = burst([through_gateway, direct] * 2, rpm["key"], 3, forced)
    served = [a for a in answers if a["status"] == 200]
    assert 4 <= len(served) <= 4 + int(took * 4 / 60), ([a["status"] for a in answers], took)
    assert {a["status"] for a in answers} == {200, 429}
    for answer in answers:
        assert answer["headers"]["x-ratelimit-limit-requests"] == "4"
        assert 0 <= int(answer["headers"]["x-ratelimit-remaining-requests"]) <= 3
        assert answer["headers"]["x-ratelimit-reset-requests"].endswith("s")
        if answer["status"] == 429:
            assert answer["body"]["error"]["message"].startswith(
                "Rate limit reached for key rpm: 4 requests per minute."
            )
            assert answer["body"]["error"]["type"] == "requests"
        else:
            count(answer["body"]["usage"])

    # Streams: one read to its end costs its usage; one the client abandons costs what was generated
    # before it left (not nothing, not its whole reservation); the budget's count is exactly their sum.
    stream_key = cli_json(
        runner, "apps", "keys", "create", name, "--label", "streams", "--daily-tokens", "100000", "--json"
    )
    headers = {"Authorization": f"Bearer {stream_key['key']}"}
    whole = api.with_options(api_key=stream_key["key"]).completions.create(
        model=name,
        prompt=forced["prompt"],
        max_tokens=4,
        temperature=1,
        extra_body={"min_tokens": 4},
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in whole if chunk.usage][0]
    count({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens})
    long = {**forced, "max_tokens": 200, "min_tokens": 200, "stream": True}
    with httpx.stream("POST", direct, json=long, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        read = sum(1 for line, _ in zip(lines, range(3), strict=False) if line.startswith("data:"))
    assert read >= 2
    prompt = cost - 4
    # Reserved: the whole stream's cost, and the abandoned one's prompt and 200 tokens; then corrected.
    settled = wait_for(
        lambda: (c := day_counter(app, stream_key["id"])) < cost + prompt + 200 and c,
        30,
        0.1,
        "the abandoned stream settled",
    )
    spent_by_abandoned = settled - cost
    assert prompt + 2 <= spent_by_abandoned < prompt + 200
    told["requests"] += 1
    told["input_tokens"] += prompt
    told["output_tokens"] += spent_by_abandoned - prompt
    # Over what is left, a stream is refused before it starts.
    small = cli_json(
        runner, "apps", "keys", "create", name, "--label", "tiny-budget", "--daily-tokens", str(cost - 1), "--json"
    )
    refused = httpx.post(direct, json={**forced, "stream": True}, headers={"Authorization": f"Bearer {small['key']}"})
    assert refused.status_code == 429 and "more than the limit of key tiny-budget" in refused.json()["error"]["message"]

    # A cache hit: a request, and no tokens against the limits; its tokens are counted as cached.
    greedy = {"model": name, "prompt": "cache me", "max_tokens": 3, "temperature": 0}
    first = httpx.post(direct, json=greedy, headers=headers).json()
    count(first["usage"])
    before = day_counter(app, stream_key["id"])
    hit = httpx.post(direct, json=greedy, headers=headers)
    assert hit.headers["x-cache"] == "HIT"
    count(hit.json()["usage"], cached=True)
    wait_for(
        lambda: cli_json(runner, "apps", "usage", name, "--json")["totals"]["requests"] == told["requests"], 30, 0.2
    )
    assert day_counter(app, stream_key["id"]) == before

    # The usage, exactly what the clients were told: the CLI, the API, the page and its CSV.
    report = cli_json(runner, "apps", "usage", name, "--json")
    assert report["totals"] == told
    per_key = {row["key"]: row for row in report["rows"]}
    assert (
        per_key["burst"]["requests"] == 3
        and per_key["burst"]["input_tokens"] + per_key["burst"]["output_tokens"] == 3 * cost
    )
    assert per_key["streams"]["cached_tokens"] == told["cached_tokens"]
    api_report = client.get(f"/api/v1/applications/{deployed.id}/usage", headers=token_headers(app, member)).get_json()
    assert api_report["totals"] == told
    page = client.get(f"/applications/{deployed.id}/usage", headers={"HX-Request": "true"}).get_data(as_text=True)
    rows = list(
        csv.DictReader(io.StringIO(client.get(f"/applications/{deployed.id}/usage?format=csv").get_data(as_text=True)))
    )
    assert {row["key"] for row in rows} == set(per_key)
    for row in rows:
        assert f'<td>{row["key"]}</td><td class="right">{int(row["requests"]):,}</td>' in page
        assert int(row["requests"]) == per_key[row["key"]]["requests"]

    # Another member sees none of it.
    other = factory.user(f"other-{uuid.uuid4().hex[:6]}@example.org")
    assert client.get("/api/v1/usage", headers=token_headers(app, other)).get_json()["totals"]["requests"] == 0


def token_headers(app, user) -> dict:
    from conftest import bearer, token_for

    return bearer(token_for(app, user))
