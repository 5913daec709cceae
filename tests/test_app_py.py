"""`python app.py`, the README's way to run everything, as a person runs it: a real process with its
embedded Redis, its workers and gunicorn, driven from the `flask` command line."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import psutil

from conftest import csrf_token_from, server_processes, wait_for
from llmapp.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def workers_of(platform: subprocess.Popen) -> set[int]:
    found = set()
    for child in psutil.Process(platform.pid).children():
        try:
            if "jobs.worker" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:  # a zombie, not yet reaped
            continue
    return found


def test_a_dead_worker_is_restarted_and_only_sigterm_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "LLMAPP_ENV")}
    env.update(LLMAPP_INSTANCE_PATH=str(tmp_path / "instance"), PORT=str(port), LLMAPP_DEMO="1")
    env["LLMAPP_WORKER_LOG_LEVEL"] = "INFO"  # what the workers did, in app.out, should this fail
    log = tmp_path / "app.out"
    with open(log, "w") as output:
        platform = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def flask(*args):
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)

    def answers():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 180, 0.5, "the platform to answer")
        deployed = flask("apps", "deploy", "hello-tiny", "--wait", "--json")
        assert deployed["status"] == "running"
        key = flask("apps", "keys", "create", "hello-tiny", "--json")["key"]
        api = openai.OpenAI(base_url=deployed["endpoint"], api_key=key, max_retries=0)
        [server] = server_processes(tmp_path)

        # The live log over gunicorn's gevent workers (as in production): the deploy's lines stream in.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as browser:
            token = csrf_token_from(browser.get("/login").text)
            login = {"email": "demo@llmapp.local", "password": "demo-password", "csrf_token": token}
            assert browser.post("/login", data=login).status_code == 302
            with browser.stream("GET", f"/applications/{deployed['id']}/logs/stream?after=0-0") as stream:
                events = []
                for line in stream.iter_lines():
                    if line.startswith("data: ") and "server process" in line:
                        events.append(line)
                        break
        assert events

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
        # The restarted worker does its work: a stop goes through it (or its sibling).
        assert flask("apps", "stop", "hello-tiny", "--wait", "--json")["status"] == "stopped"
        assert flask("apps", "deploy", "hello-tiny", "--wait", "--json")["status"] == "running"
        [server] = server_processes(tmp_path)
    finally:
        platform.send_signal(signal.SIGTERM)  # only this stops everything
        code = platform.wait(60)
    assert code == 0, log.read_text()[-3000:]
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert "Stopped 1 application server(s)." in log.read_text()
    assert not (tmp_path / "instance" / "redis.url").exists()
