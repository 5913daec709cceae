"""The REST API as a script uses it, end to end: register a model, create, deploy, call with the openai
client while following the live log stream, metrics, logs, stop, delete (plain `requests`, real
workers and a real server)."""

import json

import openai
import requests

from conftest import API, LiveServer, token_for


def test_a_script_registers_a_model_deploys_calls_watches_and_removes_an_application(
    app, factory, workers, tiny_model_dir
):
    """The README's Automation flow, with plain requests against a running platform and real workers."""

    from conftest import SERVING_CONFIG, wait_for

    workers.start(1)
    admin = factory.user("ops@example.com", admin=True)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token_for(app, admin)}"
    with LiveServer(app) as server:
        api = server.url + API
        model = session.post(
            f"{api}/models",
            json={"name": "tiny", "family": "gpt2", "parameters_billions": 0.0004, "precision": "fp32",
                  "context_length": 1024, "engine": "transformers", "source": tiny_model_dir},
        )  # fmt: skip
        assert model.status_code == 201, model.text
        body = {"name": "scripted", "model_id": model.json()["id"], **SERVING_CONFIG, "max_restarts": 0}
        created = session.post(f"{api}/applications", json=body)
        assert created.status_code == 201, created.text
        url = f"{api}/applications/{created.json()['id']}"
        deploying = session.post(f"{url}/deploy")
        assert deploying.status_code == 202 and deploying.json()["status"] == "deploying"
        running = wait_for(lambda: (a := session.get(url).json())["status"] in ("running", "failed") and a, 120, 0.5)
        assert running["status"] == "running", running["last_error"]
        key = session.post(f"{url}/keys", json={"label": "script"}).json()["key"]
        stream = session.get(f"{url}/logs/stream", stream=True, timeout=60)
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = stream.iter_lines(decode_unicode=True)
        assert next(events) == "retry: 2000" and next(events) == ": connected"  # open before the call
        client = openai.OpenAI(base_url=running["endpoint"], api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage.completion_tokens >= 1
        for event in events:  # the request's log line arrives live, as JSON
            if event.startswith("data: ") and "/v1/chat/completions 200" in event:
                line = json.loads(event[6:])
                assert line["source"] == "server" and "key=script" in line["message"]
                break
        stream.close()
        metrics = wait_for(
            lambda: (m := session.get(f"{url}/metrics?window=15m").json())["requests"] >= 1 and m, 60, 0.5
        )
        assert metrics["outcomes"]["2xx"] >= 1
        logs = session.get(f"{url}/logs?q=/v1/chat/completions").json()["items"]
        assert logs and "key=script" in logs[-1]["message"]
        assert session.post(f"{url}/stop").status_code == 202
        wait_for(lambda: session.get(url).json()["status"] == "stopped", 60, 0.5, "the application to stop")
        assert session.delete(url).status_code == 204
        assert session.get(url).status_code == 404
