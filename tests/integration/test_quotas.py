"""Limits and usage on the platform side (services/quotas.py, services/usage.py) and their checks in the
app server's pipeline with the real Redis: set through the pages, the API and the CLI with the same
rules; published signed, so a forged policy limits nothing; Redis unreachable handled as the setting
says; usage collected from the stream exactly once; each member sees their own usage only."""

import asyncio
import csv
import io
import json
import logging
import uuid

import pytest
import redis
import redis.asyncio
from test_pipeline import Client, chat, context, served

from conftest import APP_KEY, HX, ROUTE_KEY, bearer, problem, token_for
from llmapp import keyspace
from llmapp.extensions import db
from llmapp.models import ApiKey, Application, UsageDay
from llmapp.runtime import keys
from llmapp.runtime.quotas import Quotas, reservation
from llmapp.services import api_keys, quotas, usage


def test_limits_are_set_alike_from_the_page_the_api_and_the_cli(app, client, auth, member, admin, factory, runner):
    model = factory.model()
    application = factory.application(member, model, name="bot")
    auth.login(member)
    page = client.post(
        f"/applications/{application.id}/keys", data={"label": "laptop", "rpm": "5", "day": ""}, headers=HX
    )
    assert page.status_code == 200 and "5 requests per minute" in page.text
    with app.app_context():
        key = db.session.scalar(db.select(ApiKey).where(ApiKey.label == "laptop"))
        assert key.limits == {"rpm": 5}
        key_id = key.id
    # Bad input: the same message everywhere, and nothing changed.
    bad = client.post(
        f"/applications/{application.id}/keys/{key_id}/limits", data={"rpm": "-1", "tpm": "x"}, headers=HX
    )
    assert bad.status_code == 422 and "Requests per minute: a whole number from 1 to 100,000,000,000" in bad.text
    headers = bearer(token_for(app, member))
    answer = client.put(
        f"/api/v1/applications/{application.id}/keys/{key_id}/limits", json={"tpm": 0.5}, headers=headers
    )
    assert answer.status_code in (400, 422)
    answer = client.put(
        f"/api/v1/applications/{application.id}/keys/{key_id}/limits", json={"tpm": 1000, "rpm": None}, headers=headers
    )
    assert answer.status_code == 200 and answer.get_json()["limits"] == {
        "rpm": None,
        "tpm": 1000,
        "day": None,
        "month": None,
    }
    result = runner.invoke(args=["apps", "keys", "limits", "bot", str(key_id), "--rpm", "abc"])
    assert result.exit_code == 1 and "rpm: Requests per minute: a whole number" in result.output
    result = runner.invoke(args=["apps", "limits", "bot", "--monthly-tokens", "900000"])
    assert result.exit_code == 0 and "900,000 tokens per month" in result.output
    assert client.get(f"/api/v1/applications/{application.id}/limits", headers=headers).get_json()["month"] == 900000
    # A person's limits are an admin's to set.
    assert client.post(f"/users/{member.id}/limits", data={"rpm": "3"}, headers=HX).status_code == 403
    assert problem(client.put(f"/api/v1/users/{member.id}/limits", json={"rpm": 3}, headers=headers), 403)
    admin_headers = bearer(token_for(app, admin))
    assert client.put(f"/api/v1/users/{member.id}/limits", json={"rpm": 3}, headers=admin_headers).status_code == 200
    # All of it published with the keys, signed: what the servers obey.
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    entry = connection.hget(keyspace.api_keys(application.id), keys.QUOTAS_FIELD).decode()
    policy = json.loads(entry.partition(".")[2])
    assert policy["keys"] == {str(key_id): {"tpm": 1000}}
    assert policy["application"]["limits"] == {"month": 900000}
    assert policy["user"] == {"id": str(member.id), "name": member.email, "limits": {"rpm": 3}}


def test_a_policy_the_platform_did_not_sign_limits_nothing_and_a_signed_one_applies_at_once(redis_url):
    async def scenario():
        application_id = uuid.uuid4().hex
        connection = redis.Redis.from_url(redis_url)
        digest = keys.digest("good")
        keys.publish(connection, application_id, {digest: (7, "laptop")}, application_key=APP_KEY, route_key=ROUTE_KEY)
        state = served(redis_url, application_id)
        forged = {"keys": {"7": {"rpm": 1}}, "user": {"id": "1", "name": "x", "limits": {}}}
        connection.hset(keyspace.api_keys(application_id), keys.QUOTAS_FIELD, "0" * 32 + "." + json.dumps(forged))
        for _ in range(3):  # no limit holds: the entry is not the platform's
            ctx = context(state, Client(chat()))
            await (await pipeline_run(ctx))(ctx.request.scope, ctx.request.receive, lambda m: asyncio.sleep(0))
            assert ctx.outcome.status == 200
        keys.publish(
            connection, application_id, {digest: (7, "laptop")}, application_key=APP_KEY, route_key=ROUTE_KEY,
            quotas={"keys": {"7": {"rpm": 1}}, "user": {"id": "1", "name": "x", "limits": {}}},
        )  # fmt: skip
        statuses = []
        for _ in range(2):
            client = Client(chat())
            ctx = context(state, client)
            await (await pipeline_run(ctx))(ctx.request.scope, client.receive, client.send)
            statuses.append(ctx.outcome.status)
        assert statuses == [200, 429]
        assert b"key laptop: 1 request per minute" in client.body()
        headers = dict(next(m for m in client.sent if m["type"] == "http.response.start")["headers"])
        assert headers[b"x-ratelimit-limit-requests"] == b"1" and headers[b"retry-after"]
        # Deleting the entry, or writing junk over it (a signature that is not even ASCII), lifts nothing.
        for tampered in (None, "\xff\xfe." + json.dumps({}), "junk"):
            if tampered is None:
                connection.hdel(keyspace.api_keys(application_id), keys.QUOTAS_FIELD)
            else:
                connection.hset(keyspace.api_keys(application_id), keys.QUOTAS_FIELD, tampered)
            client = Client(chat())
            ctx = context(state, client)
            await (await pipeline_run(ctx))(ctx.request.scope, client.receive, client.send)
            assert ctx.outcome.status == 429, tampered
        await state.quotas.close()

    asyncio.run(scenario())


async def pipeline_run(ctx):
    from llmapp.runtime import pipeline

    return await pipeline.run(ctx)


@pytest.mark.parametrize("setting", ["serve", "refuse"])
def test_redis_unreachable_serves_or_refuses_a_limited_key_as_the_setting_says(redis_url, setting, caplog):
    async def scenario():
        application_id = uuid.uuid4().hex
        connection = redis.Redis.from_url(redis_url)
        keys.publish(
            connection, application_id, {keys.digest("good"): (7, "laptop")}, application_key=APP_KEY,
            route_key=ROUTE_KEY, quotas={"keys": {"7": {"rpm": 100}}},
        )  # fmt: skip
        state = served(redis_url, application_id)
        await state.keys.load()  # the policy and the key, known before the outage
        down = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        state.keys.connection = down
        state.quotas = Quotas(down, application_id, setting)
        state.quotas.update(state.keys.quotas.policy_text)
        state.keys.quotas = state.quotas
        client = Client(chat())
        ctx = context(state, client)
        await (await pipeline_run(ctx))(ctx.request.scope, client.receive, client.send)
        return ctx.outcome.status, client.body()

    server_log = logging.getLogger("llmapp.server")
    server_log.addHandler(caplog.handler)
    server_log.disabled = False  # the migrations' logging set-up (alembic's fileConfig) turns it off in tests
    try:
        status, body = asyncio.run(scenario())
    finally:
        server_log.removeHandler(caplog.handler)
    if setting == "serve":
        assert status == 200
        assert "serving keys that have limits without them until it is back" in caplog.text
    else:
        assert status == 503 and b"quota store is unreachable" in body


def test_usage_is_collected_once_whatever_is_read_twice(app, member, factory):
    model = factory.model()
    application = factory.application(member, model, name="counted")
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    entry = {
        "a": str(application.id),
        "k": "0",
        "u": str(member.id),
        "d": "2026-12-01",
        "r": 1,
        "input": 5,
        "output": 7,
        "cached": 0,
    }
    for _ in range(3):
        connection.xadd(keyspace.usage(), entry)
    connection.xadd(keyspace.usage(), {"a": "not-a-uuid", "d": "yesterday"})  # malformed: passed over
    with app.app_context():
        assert usage.collect() == 4
        assert usage.collect() == 0  # nothing new: nothing counted again
        connection.xadd(keyspace.usage(), entry)
        usage.collect()
        row = db.session.scalar(db.select(UsageDay).where(UsageDay.application_id == application.id))
        assert (row.requests, row.input_tokens, row.output_tokens) == (4, 20, 28)
        assert row.application_name == "counted" and row.user_id == member.id


def test_each_member_sees_their_own_usage_and_the_csv_cannot_run_formulas(app, client, auth, member, factory):
    other = factory.user("other@example.com")
    model = factory.model()
    mine = factory.application(member, model, name="mine")
    theirs = factory.application(other, model, name="theirs")
    with app.app_context():
        key, _ = api_keys.create_key(db.session.get(Application, mine.id), "=HYPERLINK(1)")
        key_id = key.id
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    today = usage.utcnow().date().isoformat()
    for application, owner, key in ((mine, member, key_id), (theirs, other, 0)):
        connection.xadd(
            keyspace.usage(),
            {
                "a": str(application.id),
                "k": key,
                "u": str(owner.id),
                "d": today,
                "r": 1,
                "input": 1,
                "output": 2,
                "cached": 0,
            },
        )
    auth.login(member)
    page = client.get("/usage").get_data(as_text=True)
    assert "mine" in page and "theirs" not in page
    assert client.get(f"/applications/{theirs.id}/usage").status_code == 404
    assert client.get("/usage?days=0").status_code == 400
    rows = list(csv.DictReader(io.StringIO(client.get("/usage?format=csv").get_data(as_text=True))))
    assert [(r["application"], r["key"], r["requests"]) for r in rows] == [("mine", "'=HYPERLINK(1)", "1")]
    api = client.get("/api/v1/usage", headers=bearer(token_for(app, member))).get_json()
    assert api["totals"]["requests"] == 1 and api["rows"][0]["application"] == "mine"
    assert quotas.describe({}) == "no limits"


def test_malformed_usage_records_are_passed_over_and_the_rest_counted(app, member, factory):
    application = factory.application(member, factory.model(), name="robust")
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    good = {"a": str(application.id), "k": "0", "u": str(member.id), "d": "2026-12-02", "r": 1, "input": 3, "output": 4}
    connection.xadd(keyspace.usage(), {**good, "a": b"\xff\xfe"})  # not UTF-8
    connection.xadd(keyspace.usage(), {**good, "input": str(2**70)})  # past any column
    connection.xadd(keyspace.usage(), {**good, "k": str(2**40)})  # no key's id
    connection.xadd(keyspace.usage(), {**good, "u": ""})  # no owner: the next record's names it
    connection.xadd(keyspace.usage(), good)
    with app.app_context():
        assert usage.collect() == 5
        row = db.session.scalar(db.select(UsageDay).where(UsageDay.application_id == application.id))
        assert (row.requests, row.input_tokens, row.output_tokens, row.user_id) == (2, 6, 8, member.id)


def test_what_an_upstream_request_reserves():
    """An upstream judges its own parameters: it is held to what the body asks of it."""
    chat_body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 400},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100000}}]}]}  # fmt: skip
    assert reservation(chat_body, 16, 0, True, 8192) == (105, 105 + 4096)  # no max_tokens: up to 4,096
    assert reservation({**chat_body, "max_tokens": 10, "n": 3}, 16, 0, True, 8192) == (105, 135)
    batch = {"prompt": ["a" * 40, "b" * 40], "max_tokens": 5}
    assert reservation(batch, 16, 0, True, 8192) == (22, 22 + 5 * 2)
    assert reservation({"prompt": [1, 2, 3], "max_tokens": 5}, 16, 0, True, 8192) == (3, 8)
    assert reservation({"prompt": [[1, 2], [3]], "max_tokens": 5}, 16, 0, True, 100) == (3, 13)
    assert reservation({"prompt": "x"}, 7, 12, False, 8192) == (12, 19)  # a tokenizer counted: exact
