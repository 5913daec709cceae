"""What the reconcile decides about a server (llmapp/services/supervision.py), as tables: dead or busy,
restarted or failed."""

import pytest


def test_a_busy_server_is_not_a_dead_one():
    """The reconcile's judgement of a server that did not answer its health check (pure)."""
    from llmapp.services.supervision import BUSY_LIMIT_S, SILENT_CHECKS, Silence, judge_silence

    silence, reason = Silence(), None
    for check in range(SILENT_CHECKS - 1):  # no CPU used: a stopped or deadlocked process
        silence, reason = judge_silence(silence, cpu_s=5.0, now=100.0 + check)
        assert reason is None and silence.misses == check + 1
    assert judge_silence(silence, 5.0, 110.0)[1] == "the server stopped answering its health checks"

    busy, reason = judge_silence(Silence(misses=2, cpu_s=5.0), cpu_s=9.0, now=200.0)  # it used CPU meanwhile
    assert reason is None and busy.misses == 0 and busy.busy_since == 200.0
    busy, reason = judge_silence(busy, cpu_s=13.0, now=200.0 + BUSY_LIMIT_S - 1)
    assert reason is None and busy.busy_since == 200.0
    assert "hung" in judge_silence(busy, cpu_s=17.0, now=200.0 + BUSY_LIMIT_S)[1]
    assert Silence.load({k.encode(): v.encode() for k, v in busy.dump().items()}) == busy


@pytest.mark.parametrize(
    ("policy", "limit", "used", "expected"),
    [
        ("on-failure", 3, 0, (True, 1, "")),
        ("on-failure", 3, 2, (True, 4, "")),
        ("on-failure", 3, 3, (False, 0, "The server process died after 3 restarts.")),
        ("on-failure", 1, 1, (False, 0, "The server process died after 1 restart.")),
        ("on-failure", 0, 0, (False, 0, "The server process died after 0 restarts.")),
        ("never", 3, 0, (False, 0, "The server process died (restart policy: never).")),
    ],
)
def test_the_restart_decision(policy, limit, used, expected):
    """The restart policy as a rule (pure): back-off 1, 2, 4… s, up to the limit, then the reason."""
    from llmapp.services.supervision import decide_restart

    decision = decide_restart("the server process died", policy, limit, used)
    assert (decision.restart, decision.delay_s, decision.error) == expected


@pytest.mark.parametrize(
    ("status", "started_s_ago", "took_its_lock", "in_hand"),
    [
        ("scheduled", None, False, True),  # a restart's deploy, delayed
        ("queued", None, False, True),
        ("deferred", None, False, True),
        ("started", 0.5, False, True),  # taken by a worker, its lock not yet: on its way
        ("started", 59, False, True),
        ("started", 61, False, False),  # never took its lock: its work horse died before
        ("started", 2, True, False),  # held its lock and lost it: it died
        ("finished", 3, True, False),
        ("failed", 3, False, False),
        (None, None, False, False),
    ],
)
def test_whether_a_job_is_on_its_way(status, started_s_ago, took_its_lock, in_hand):
    from llmapp.services.supervision import job_in_hand

    assert job_in_hand(status, started_s_ago, took_its_lock) is in_hand


def test_a_servers_record_of_its_keys_use_is_read_for_what_it_is():
    """A server writes its keys' last use to Redis, and a server may write anything: junk is left out
    (one bad entry once failed the whole reconcile of the host)."""
    from datetime import datetime

    from llmapp.services.supervision import key_uses

    written = {
        b"7": b"1796467987", b"8": b"1796467987.5",  # what a server writes
        b"x": b"1", b"9": b"soon", b"0": b"1", b"99999999999": b"1", b"10": b"nan", b"11": b"1e300", b"12": b"-5",
    }  # fmt: skip
    assert key_uses(written) == {
        7: datetime(2026, 12, 5, 10, 53, 7), 8: datetime(2026, 12, 5, 10, 53, 7, 500000),
    }  # fmt: skip
