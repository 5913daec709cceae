"""Application logs: search, download, retention, the live SSE stream over real HTTP (with exact
resume), access control, the CLI, and secrets redacted on the server's real logging path."""

import json
import threading
import time

import httpx
import pytest
import redis

from conftest import HOSTILE, HX, SSE, LiveServer, fetch, has_raw_control, read_events, wait_for, write
from llmapp import keyspace
from llmapp.extensions import db
from llmapp.runtime import logs as runtime_logs
from llmapp.services import live_logs
from llmapp.services import logs as logs_service

LIVE = {"LOG_HEARTBEAT_S": 0.2, "LOG_STREAM_BLOCK_S": 0.5}


def test_search_by_level_text_and_time_in_pages(app, factory, member):
    application = factory.application(member, factory.model(), name="searched")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    for i in range(250):
        write(app, application.id, f"line {i} {'needle' if i % 10 == 0 else 'hay'}", levels[i % 4], request_id=f"r{i}")
    row = fetch(app, application.id)
    with app.app_context():
        errors = logs_service.search(row, level="ERROR", limit=1000)
        assert [line.message for line in errors.lines] == [
            f"line {i} {'needle' if i % 10 == 0 else 'hay'}" for i in range(3, 250, 4)
        ]
        warnings_up = logs_service.search(row, level="warning", limit=1000)
        assert {line.level for line in warnings_up.lines} == {"WARNING", "ERROR"} and len(warnings_up.lines) == 124
        needles = logs_service.search(row, text="NEEDLE", limit=1000)
        assert [line.request_id for line in needles.lines] == [f"r{i}" for i in range(0, 250, 10)]
        assert [line.message for line in logs_service.search(row, text="r137").lines] == ["line 137 hay"]
        # Pages of 100, newest first across pages, newest last within one; the cursor goes back in time.
        first = logs_service.search(row)
        second = logs_service.search(row, before=first.older)
        third = logs_service.search(row, before=second.older)
        assert [len(p.lines) for p in (first, second, third)] == [100, 100, 50] and third.older is None
        seen = [line.message.split()[1] for page in (third, second, first) for line in page.lines]
        assert seen == [str(i) for i in range(250)]  # every line once, in order
        assert logs_service.search(row, since=time.time() + 60).lines == []  # a range after them all
        assert len(logs_service.search(row, since=time.time() - 3600, limit=1000).lines) == 250
        with pytest.raises(logs_service.ServiceError, match="not a log level"):
            logs_service.search(row, level="LOUD")
        with pytest.raises(logs_service.ServiceError, match="not a duration"):
            logs_service.parse_since("yesterday")


def test_download_is_streamed_in_chunks_as_text_or_ndjson(logged_in, app, factory, member):
    application = factory.application(member, factory.model(), name="dl")
    for i in range(1200):
        write(app, application.id, f"line {i}", request_id="rid" if i == 7 else None)
    response = logged_in.get(f"/applications/{application.id}/logs/download?format=ndjson")
    assert response.is_streamed and response.mimetype == "application/x-ndjson"
    assert (
        "attachment" in response.headers["Content-Disposition"]
        and "dl-log.ndjson" in response.headers["Content-Disposition"]
    )
    records = [json.loads(line) for line in response.text.splitlines()]
    assert [r["message"] for r in records] == [f"line {i}" for i in range(1200)]
    assert records[7]["request_id"] == "rid" and records[7]["level"] == "INFO" and records[7]["time"].endswith("+00:00")
    with app.app_context():
        chunks = list(logs_service.export(fetch(app, application.id), "text"))
    assert len(chunks) == 3  # 500 lines a chunk, never the whole log at once
    text = logged_in.get(f"/applications/{application.id}/logs/download").text.splitlines()
    assert len(text) == 1200 and text[7].endswith("server   [rid] line 7")


def test_retention_keeps_the_lines_and_the_age_each_application_asks_for(app, factory, member):
    model = factory.model()
    short = factory.application(member, model, name="short", config={"log_lines": 100, "log_days": 7})
    default = factory.application(member, model, name="default", config={})
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    old_ms = int((time.time() - 9 * 86400) * 1000)
    for application in (short, default):
        for i in range(5):  # nine days old
            connection.xadd(keyspace.logs(application.id), {"message": f"old {i}"}, id=f"{old_ms + i}-0")
        for i in range(300):
            write(app, application.id, f"new {i}")
    with app.app_context():
        assert logs_service.trim_all() == 2
    assert connection.xlen(keyspace.logs(short.id)) == 100  # its lines
    kept = [fields[b"message"] for _, fields in connection.xrange(keyspace.logs(default.id))]
    assert len(kept) == 300 and kept[0] == b"new 0"  # the platform's 2,000 lines, none older than 7 days


def test_the_pane_shows_the_latest_lines_escaped_and_searches(logged_in, app, factory, member):
    application = factory.application(member, factory.model(), name="pane")
    write(app, application.id, "deploy requested", source="platform")
    write(app, application.id, '<script>alert("x")</script><img src=x onerror=alert(1)>', "ERROR")
    page = logged_in.get(f"/applications/{application.id}/logs").text  # the whole page
    assert "<h1>" in page and "deploy requested" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    pane = logged_in.get(f"/applications/{application.id}/logs", headers=HX).text  # the pane alone
    assert "<h1>" not in pane and 'sse-connect="/applications/' in pane and "after=" in pane
    found = logged_in.get(f"/applications/{application.id}/logs?level=ERROR", headers=HX).text
    assert "1 matching line" in found and "deploy requested" not in found and "sse-connect" not in found
    assert "not a duration" in logged_in.get(f"/applications/{application.id}/logs?since=soon", headers=HX).text
    assert 'hx-trigger="load"' in logged_in.get(f"/applications/{application.id}").text  # the pane loads itself


@pytest.mark.parametrize("config_overrides", [LIVE])
def test_the_live_stream_resumes_exactly_and_frees_what_a_departed_client_held(app, factory, member, config_overrides):
    application = factory.application(member, factory.model(), name="live")
    write(app, application.id, "before anyone watched")
    with LiveServer(app) as server:
        client = httpx.Client(base_url=server.url, timeout=30)
        client.post("/login", data={"email": member.email, "password": "password123"})
        with app.app_context():
            hub = live_logs.hub()
        threads_before = threading.active_count()
        url = f"/applications/{application.id}/logs/stream"
        first = []
        with client.stream("GET", url) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
            wait_for(lambda: hub.viewers() == 1, 10, 0.05, "the viewer to subscribe")
            sent = [write(app, application.id, f"live {i}", request_id=f"req-{i}") for i in range(5)]
            read_events(response.iter_lines(), 5, first)
        assert [e["id"] for e in first] == sent and "live 0" in first[0]["data"] and "req-0" in first[0]["data"]
        assert "before anyone watched" not in "".join(e["data"] for e in first)  # from the moment it connected

        # Away, then back with Last-Event-ID: exactly the lines it missed, none twice, none lost.
        missed = [write(app, application.id, f"while away {i}") for i in range(7)]
        again = []
        with client.stream("GET", url, headers={"Last-Event-ID": first[-1]["id"]}) as response:
            lines = response.iter_lines()
            read_events(lines, 7, again)
            later = write(app, application.id, "after the return")
            read_events(lines, 8, again)
        assert [e["id"] for e in again] == [*missed, later]
        # ?after= does the same for a fresh EventSource (the page keeps it up to date).
        resumed = []
        with client.stream("GET", f"{url}?after={missed[3]}") as response:
            read_events(response.iter_lines(), 4, resumed)
        assert [e["id"] for e in resumed] == [*missed[4:], later]

        # A client that goes away frees its subscription, the shared reader and their threads.
        wait_for(lambda: hub.viewers() == 0, 10, 0.05, "the subscriptions to end")
        wait_for(lambda: not hub.readers, 10, 0.05, "the reader to stop")
        wait_for(lambda: threading.active_count() <= threads_before, 10, 0.05, "threads back to their count")
        client.close()


@pytest.mark.parametrize("config_overrides", [LIVE])
def test_many_viewers_share_one_reader(app, factory, member, config_overrides):
    application = factory.application(member, factory.model(), name="shared")
    with LiveServer(app) as server:
        clients = []
        for _ in range(5):
            c = httpx.Client(base_url=server.url, timeout=30)
            c.post("/login", data={"email": member.email, "password": "password123"})
            clients.append(c)
        with app.app_context():
            hub = live_logs.hub()
        streams = [c.stream("GET", f"/applications/{application.id}/logs/stream") for c in clients]
        responses = [s.__enter__() for s in streams]
        wait_for(lambda: hub.viewers() == 5, 10, 0.05, "five viewers")
        assert len(hub.readers) == 1  # one reader (one Redis connection) for all of them
        sent = [write(app, application.id, f"fan {i}") for i in range(20)]
        for response in responses:
            got = []
            read_events(response.iter_lines(), 20, got)
            assert [e["id"] for e in got] == sent  # every line to every viewer, in order, once
        for stream in streams:
            stream.__exit__(None, None, None)
        wait_for(lambda: hub.viewers() == 0 and not hub.readers, 10, 0.05, "all gone")
        for c in clients:
            c.close()


def test_another_members_log_is_404_everywhere(app, client, auth, factory, member, runner):
    other = factory.user("other@example.com")
    theirs = factory.application(other, factory.model(), name="theirs")
    write(app, theirs.id, "their secret business")
    auth.login(member)
    base = f"/applications/{theirs.id}/logs"
    for url in (base, f"{base}?q=business", f"{base}/stream", f"{base}/download", f"{base}/download?format=ndjson"):
        response = client.get(url)
        assert response.status_code == 404 and "their secret business" not in response.text, url
    refused = runner.invoke(args=["apps", "logs", "theirs", "--as", member.email])
    assert refused.exit_code != 0 and "No application named “theirs”." in refused.output
    assert "their secret business" in runner.invoke(args=["apps", "logs", "theirs", "--as", other.email]).output


def test_the_cli_prints_filters_and_follows(app, factory, member, runner, database_url, redis_url):
    import os
    import subprocess
    import sys
    from pathlib import Path

    application = factory.application(member, factory.model(), name="cli-log")
    write(app, application.id, "hello from the server", request_id="abc-1")
    write(app, application.id, "something broke", "ERROR")
    write(app, application.id, "deploy requested", source="platform")
    printed = runner.invoke(args=["apps", "logs", "cli-log", "--json"])
    assert [json.loads(line)["message"] for line in printed.output.splitlines()] == [
        "hello from the server",
        "something broke",
        "deploy requested",
    ]
    assert runner.invoke(args=["apps", "logs", "cli-log", "--level", "error"]).output.count("\n") == 1
    assert "abc-1" in runner.invoke(args=["apps", "logs", "cli-log", "--grep", "ABC-1"]).output
    assert runner.invoke(args=["apps", "logs", "cli-log", "--since", "1h"]).output.count("\n") == 3
    assert runner.invoke(args=["apps", "logs", "cli-log", "--since", "soon"]).exit_code != 0

    # --follow: like tail -f, in a real process, until it is stopped.
    env = {
        **os.environ,
        "LLMAPP_ENV": "testing",
        "SECRET_KEY": "test-secret-key",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
    }
    root = Path(__file__).resolve().parents[2]
    follower = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "llmapp", "apps", "logs", "cli-log", "--follow", "--level", "WARNING"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    import queue

    printed_lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [printed_lines.put(line) for line in follower.stdout], daemon=True).start()
    try:
        assert printed_lines.get(timeout=60).rstrip().endswith("something broke")  # the history first
        write(app, application.id, "not shown: below the level", "INFO")
        write(app, application.id, "live warning", "WARNING")
        assert printed_lines.get(timeout=60).rstrip().endswith("live warning")  # then, live, what matches
    finally:
        follower.terminate()
        follower.wait(10)


# --- untrusted text in a line: one record is one line, wherever it is shown -------------------------


def test_sse_events_stay_whole_whatever_their_text():
    """The SSE writer is safe for any text: data split where a parser splits lines, id and event one
    field each."""

    class Body:
        def __init__(self, text):
            self.text = text

        def iter_text(self):
            yield from self.text  # one character at a time: the reader's CRLF handling too

    data = "one\rtwo\r\nthree\nfour\r\r\nfive"
    text = live_logs.sse_event(data, "line\r\nevent: forged", "1-1\r\nid: 9999\rdata: forged")
    text += live_logs.sse_event("next", "line", "2-2")
    reader = SSE(Body(text))
    first, second = reader.events(2)
    assert first["data"] == "one\ntwo\nthree\nfour\n\nfive"  # every line break, as the browser joins them
    assert first["event"] == "line\\r\\nevent: forged" and first["id"] == "1-1\\r\\nid: 9999\\rdata: forged"
    assert second == {"id": "2-2", "event": "line", "data": "next"} and reader.last_id == "2-2"


@pytest.mark.parametrize("config_overrides", [LIVE])
def test_every_reader_shows_one_line_per_record_and_no_control(
    app, factory, member, runner, logged_in, config_overrides
):
    """Lines with hostile text, made by the one record maker (runtime/logs.record) and also written raw
    (by a server of an older version): the download has one line per record, the pane's and the API's
    SSE events are exactly the records (no forged id), the pane and `flask apps logs` show no control."""
    from llmapp.models import User
    from llmapp.services import access_tokens

    application = factory.application(member, factory.model(), name="hostile")
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    key = keyspace.logs(application.id)
    runtime_logs.append(connection, application.id, f"deploy of {HOSTILE}", "INFO", source=HOSTILE)
    connection.xadd(
        key, runtime_logs.record(f"asked for {HOSTILE}", "WARNING", "server", HOSTILE, {HOSTILE: [HOSTILE]})
    )
    connection.xadd(key, {"ts": "1", "level": "ERROR", "source": "server", "message": HOSTILE, "request_id": "\x1b"})
    ids = [entry_id.decode() for entry_id, _ in connection.xrange(key)]
    raw = b"".join(value for _, fields in connection.xrange(key)[:2] for value in fields.values()).decode()
    assert not has_raw_control(raw)  # written neutralised

    text = logged_in.get(f"/applications/{application.id}/logs/download").text
    assert len(text.splitlines()) == 3 and not has_raw_control(text.replace("\n", ""))
    ndjson = logged_in.get(f"/applications/{application.id}/logs/download?format=ndjson").text
    assert [json.loads(line)["id"] for line in ndjson.splitlines()] == ids
    pane = logged_in.get(f"/applications/{application.id}/logs", headers=HX).text
    assert "\x1b" not in pane and "\r" not in pane and "\\x1b[31m" in pane
    printed = runner.invoke(args=["apps", "logs", "hostile"]).output
    assert len(printed.splitlines()) == 3 and "\x1b" not in printed and "id: 9999" in printed
    assert "\x1b" not in runner.invoke(args=["apps", "logs", "hostile", "--json"]).output

    with app.app_context():
        _, token = access_tokens.create(db.session.get(User, member.id), "tests", None)
    with LiveServer(app) as server:
        page = httpx.Client(base_url=server.url, timeout=30)
        page.post("/login", data={"email": member.email, "password": "password123"})
        api = httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
        for client, url in (
            (page, f"/applications/{application.id}/logs/stream?after=0-0"),
            (api, f"/api/v1/applications/{application.id}/logs/stream?after=0-0"),
        ):
            with client.stream("GET", url) as response:
                reader = SSE(response)
                events = reader.events(len(ids))
                ids.append(write(app, application.id, "after them"))
                events += reader.events(1)
            assert [e["id"] for e in events] == ids and reader.last_id == ids[-1], url
            assert {e["event"] for e in events} == {"line"}
            assert all("id: 9999" in e["data"] and not has_raw_control(e["data"]) for e in events[:3]), url
            client.close()
