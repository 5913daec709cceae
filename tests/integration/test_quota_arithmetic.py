"""The quota scripts' arithmetic (runtime/quotas.py) on the real Redis, with the clock given, against a
plain model of what the limits promise: a token bucket of the limit refilled at limit per minute, and a
counter per UTC day and month. Hypothesis drives them to the boundaries (exactly full, one short, the
last millisecond of a day or month, a refund larger than the use)."""

import asyncio
import calendar
import json
import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmapp.runtime.errors import APIError
from llmapp.runtime.keys import KeyInfo
from llmapp.runtime.quotas import Charge, Limit, Policy, Quotas, duration

U = 60000
DAY_MS = 86_400_000


class Bucket:
    """A rate as the model: level in 1/60000 of a unit, refilled by the capacity each ms."""

    def __init__(self, capacity):
        self.capacity, self.level, self.at = capacity, capacity * U, None

    def now(self, t):
        if self.at is not None and t > self.at:
            self.level = min(self.level + (t - self.at) * self.capacity, self.capacity * U)
            self.at = t
        elif self.at is None:
            self.at = t
        return self.level


def month_bounds(ms):
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return moment.year * 100 + moment.month, int(start.timestamp() * 1000) + days * DAY_MS


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def quotas_for(redis_url, policy: dict) -> tuple[Quotas, KeyInfo]:
    """Quotas of a new application, user and key (each example's limits start full)."""
    application, key, user = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    policy = {**policy, "keys": dict.fromkeys([key], *policy["keys"].values()) if "keys" in policy else {}}
    if "user" in policy:
        policy["user"] = {**policy["user"], "id": user}
    quotas = Quotas(redis.asyncio.Redis.from_url(redis_url), application)
    quotas.update(json.dumps(policy))
    return quotas, KeyInfo(key, "laptop")


KEY = KeyInfo("7", "laptop")
# Times from 2027 to 2100, so month ends and leap years come up (and no counter expires on arrival).
TIMES = st.integers(1_798_761_600_000, 4_102_444_800_000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    capacity=st.integers(1, 50),
    start=TIMES,
    steps=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 60)), min_size=1, max_size=30),
)
def test_a_token_bucket_admits_exactly_what_the_model_does(redis_url, loop, capacity, start, steps):
    quotas, key = quotas_for(redis_url, {"keys": {"7": {"tpm": capacity, "rpm": capacity}}})
    requests, tokens = Bucket(capacity), Bucket(capacity)
    now = start
    for gap, cost in steps:
        now += gap
        expected = requests.now(now) >= U and (cost == 0 or tokens.now(now) >= cost * U)
        tokens.now(now)
        try:
            charge = loop.run_until_complete(quotas.admit(key, cost, now_ms=str(now)))
        except APIError as e:
            assert not expected, f"refused at {now}: {e.message}"
            assert e.status == 429 and "key laptop" in e.message
            if cost > capacity and requests.level >= U:  # the request limit, checked first, passed
                assert "more than the limit" in e.message
            else:
                assert int(e.headers["Retry-After"]) >= 1
            continue
        assert expected, f"admitted at {now} though the model says no"
        requests.level -= U
        tokens.level -= cost * U
        assert charge.headers["x-ratelimit-limit-requests"] == str(capacity)
        assert charge.headers["x-ratelimit-remaining-requests"] == str(max(requests.level // U, 0))
        assert charge.headers["x-ratelimit-remaining-tokens"] == str(max(tokens.level // U, 0))
        full_in = -(-(capacity * U - requests.level) // capacity)
        assert charge.headers["x-ratelimit-reset-requests"] == duration(full_in)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget=st.integers(1, 1000),
    start=TIMES,
    steps=st.lists(
        st.tuples(st.integers(0, 3 * DAY_MS), st.integers(0, 400), st.integers(0, 400)), min_size=1, max_size=20
    ),
)
def test_day_and_month_budgets_count_to_the_period_of_admission(redis_url, loop, budget, start, steps):
    """Each admission reserves its tokens in its own day and month; a settlement (even on another day)
    corrects that day's and month's count; a request that would pass the budget is refused until the
    period ends, and its Retry-After says when that is."""
    quotas, key = quotas_for(
        redis_url, {"application": {"name": "bot", "limits": {"day": budget, "month": 3 * budget}}}
    )
    days, months = {}, {}
    now = start
    for gap, reserve, use in steps:
        now += gap
        use = use if reserve else 0  # nothing reserved: nothing used (a cache hit's tokens are "cached")
        day, month = now // DAY_MS, month_bounds(now)[0]
        fits = reserve == 0 or (days.get(day, 0) + reserve <= budget and months.get(month, 0) + reserve <= 3 * budget)
        try:
            charge = loop.run_until_complete(quotas.admit(key, reserve, now_ms=str(now)))
        except APIError as e:
            assert not fits
            assert "application bot" in e.message and e.type == "insufficient_quota" or "more than" in e.message
            if reserve <= budget and days.get(day, 0) + reserve > budget:
                assert int(e.headers["Retry-After"]) == -(-((day + 1) * DAY_MS - now) // 1000)
            continue
        assert fits, f"{reserve} admitted past the budget at {now}"
        days[day] = days.get(day, 0) + reserve
        months[month] = months.get(month, 0) + reserve
        # Settled a little later, maybe past midnight: the admission's day and month get the correction.
        settle_at = now + gap // 2
        loop.run_until_complete(
            quotas.settle(charge, key.id, {"input": use, "output": 0, "cached": 0}, now_ms=str(settle_at))
        )
        if reserve:
            days[day] += use - reserve
            months[month] += use - reserve


def test_a_month_ends_where_the_calendar_says(redis_url, loop):
    """The script's civil-date arithmetic at every month end of a leap and a common year, and a century."""
    for year in (2028, 2027, 2100):
        for month in range(1, 13):
            quotas, key = quotas_for(redis_url, {"user": {"name": "a@example.org", "limits": {"month": 10}}})
            _, end = month_bounds(int(datetime(year, month, 15, tzinfo=UTC).timestamp() * 1000))
            loop.run_until_complete(quotas.admit(key, 10, now_ms=str(end - 1)))  # the month's last ms: full
            with pytest.raises(APIError) as refused:
                loop.run_until_complete(quotas.admit(key, 1, now_ms=str(end - 1)))
            assert refused.value.headers["Retry-After"] == "1" and "user a@example.org" in refused.value.message
            loop.run_until_complete(quotas.admit(key, 10, now_ms=str(end)))  # the next month's first: empty


def test_the_tightest_limit_and_scope_are_named(redis_url, loop):
    policy = Policy.parse(
        "app-id",
        '{"application": {"name": "bot", "limits": {"rpm": 2}}, "user": {"id": "3", "name": "ann", "limits": {}},'
        ' "keys": {"7": {"rpm": 5}}}',
    )
    assert [limit.describe() for limit in policy.limits_for(KEY)] == [
        "key laptop: 5 requests per minute",
        "application bot: 2 requests per minute",
    ]
    assert policy.limits_for(KeyInfo("8", "")) == [Limit("application", "app-id", "bot", "rpm", 2)]
    assert [duration(ms) for ms in (0, 20, 999, 1000, 1001, 61_000, 3_723_000)] == [
        "0ms", "20ms", "999ms", "1s", "2s", "1m1s", "1h2m3s",
    ]  # fmt: skip


def test_a_charge_without_limits_asks_nothing_of_redis(loop):
    """No limit: no Redis call on the request's path (an unreachable Redis costs nothing)."""
    quotas = Quotas(redis.asyncio.Redis.from_url("redis://127.0.0.1:1"), "x")
    charge = loop.run_until_complete(quotas.admit(KEY, 40))
    assert isinstance(charge, Charge) and charge.held.limits == [] and charge.headers == {}
