"""Every page a person opens, asked for in Chinese, is in Chinese: no message left unmarked, in any state
the page has (empty, with rows, running, failed, with errors). English stays the default."""

import re
from datetime import UTC, datetime

import pytest

from llmapp.extensions import db
from llmapp.models import Application
from llmapp.services import api_keys, plugins

ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
# What may stay in Latin letters on a Chinese page besides its data: product, format and technical names,
# the OpenAI field `model`, log levels, units.
LATIN_ALLOWED = {
    "llmapp", "API", "REST", "OpenAI", "vLLM", "token", "tokens", "URL", "JSON", "GPU", "GPUs", "CPU", "UTC",
    "CSV", "txt", "ndjson", "English", "model", "INFO", "DEBUG", "WARNING", "ERROR", "RAG", "BM25", "PII",
    "Webhook", "HMAC-SHA256", "X-LLMApp-Signature", "RE2", "ISO", "EMAIL", "PHONE", "label", "partial",
    "ignore", "match", "block", "mask", "finish_reason", "content_filter", "NAME", "value", "input",
    "name", "passages", "Hugging", "Face", "GGUF", "llama", "cpp", "gguf", "safetensors", "worker",
    "transformers", "openai", "vllm", "transformers-serve", "Prometheus", "Bearer", "KV", "README",
    "More", "machines", "LLMAPP_HOSTNAME", "LLMAPP_ADVERTISE_HOST", "DATABASE_URL", "REDIS_URL",
    "SECRET_KEY", "Release", "Llmapp", "Top-p", "virtualenv", "serve",
    "email", "phone", "id_number",  # the PII plugin's choices: values of its schema, as the API takes them
}  # fmt: skip
SKIPPED = re.compile(r"<(script|style|pre|code|option|noscript|textarea)\b.*?</\1>", re.S | re.I)


def english_left(html: str, *data: str) -> dict[str, str]:
    """Latin words a page shows as text (tags, code samples and the choices of selects aside), beyond
    ``data`` and LATIN_ALLOWED, each with the line it is on."""
    text = re.sub(r"<[^>]+>", "\n", SKIPPED.sub(" ", html))
    text = re.sub(r"class=\"mono\"[^<]*", " ", text)
    for value in data:
        text = text.replace(value, " ")
    # paths, URLs, emails, package pins, ids, key prefixes
    text = re.sub(r"(?<![\w])/[\w./-]+|https?://\S+|\S+@\S+|\S+==\S+|[0-9a-f-]{36}|llm-\S+", " ", text)
    return {
        word: line.strip()[:160]
        for line in text.splitlines()
        for word in re.findall(r"[A-Za-z][A-Za-z_-]{2,}", line)
        if word not in LATIN_ALLOWED and not word.startswith("&")
    }


@pytest.fixture
def world(app, factory, auth):
    """An admin with a model, a plugin, and applications in several states."""
    admin = factory.user("root@example.com", admin=True)
    model = factory.model(name="Qwen-0.5B", parameters_billions=0.5, precision="bf16", context_length=4096)
    stopped = factory.application(admin, model, name="quiet-bot")
    running = factory.application(admin, model, name="busy-bot")
    failed = factory.application(admin, model, name="broken-bot")
    with app.app_context():
        for application, status in ((running, "running"), (failed, "failed")):
            row = db.session.get(Application, application.id)
            row.status = status
            row.deployed_at = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
        db.session.commit()
        plugin = plugins.create(
            admin, {"name": "pii-mask", "type": "pii_redaction", "config": {}, "description": "masks"}
        )
        api_keys.create_key(db.session.get(Application, running.id), "staging")
        ids = {"stopped": stopped.id, "running": running.id, "failed": failed.id, "plugin": plugin.id}
    auth.login(admin)
    return ids, model.id


def pages(ids, model_id):
    yield "/applications/"
    yield "/applications/new"
    for state in ("stopped", "running", "failed"):
        yield f"/applications/{ids[state]}"
    yield f"/applications/{ids['stopped']}/edit"
    for window in ("15m", "24h", "7d"):
        yield f"/applications/{ids['running']}/monitoring?window={window}"
    yield f"/applications/{ids['running']}/logs?q=error"
    yield "/plugins/"
    yield "/plugins/new"
    yield f"/plugins/{ids['plugin']}/edit"
    yield "/models/"
    yield "/models/new"
    yield f"/models/{model_id}/edit"
    yield "/models/engines"
    yield "/hosts/"
    yield "/usage"
    yield "/audit"
    yield "/users/"
    yield "/users/account"
    yield "/no-such-page"


def test_every_page_asked_for_in_chinese_is_chinese(client, world):
    ids, model_id = world
    data = ("quiet-bot", "busy-bot", "broken-bot", "Qwen-0.5B", "pii-mask", "masks", "staging", "bf16")
    leaks = {}
    for path in pages(ids, model_id):
        response = client.get(path, headers=ZH)
        assert response.status_code in (200, 404), (path, response.status_code)
        assert '<html lang="zh-CN">' in response.text or not response.text.startswith("<!doctype"), path
        assert re.search(r"[\u4e00-\u9fff]", response.text), f"{path}: no Chinese at all"
        if left := english_left(response.text, *data):
            leaks[path] = left
    assert not leaks, f"English left on Chinese pages: {leaks}"


def test_the_form_errors_are_chinese_and_english_stays_the_default(client, world):
    refused = client.post("/applications/new", data={"name": "", "batch_size": "999"}, headers=ZH)
    assert refused.status_code == 422
    assert "请填写名称。" in refused.text and "Name is required." not in refused.text
    assert not english_left(refused.text, "Qwen-0.5B", "bf16", "pii-mask")
    english = client.post("/applications/new", data={"name": "", "batch_size": "999"})
    assert "Name is required." in english.text and '<html lang="en">' in english.text
    assert "名称" not in english.text


def test_the_login_page_follows_the_browser_then_the_switch(client):
    assert '<html lang="zh-CN">' in client.get("/login", headers=ZH).text
    assert '<html lang="en">' in client.get("/login").text
    client.post("/language", data={"language": "en", "next": "/login"}, headers=ZH)
    page = client.get("/login", headers=ZH).text
    assert '<html lang="en">' in page and "Log in to llmapp" in page


def test_a_release_note_the_platform_wrote_is_shown_in_chinese_and_a_persons_as_written(app, client, world):
    from llmapp.models import User
    from llmapp.services import releases

    ids, _model = world
    with app.app_context():
        application = db.session.get(Application, ids["stopped"])
        admin = db.session.scalar(db.select(User).filter_by(email="root@example.com"))
        releases.record(application, admin, releases.note("attached", name="pii-mask"))
    pane = client.get(f"/applications/{ids['stopped']}/releases", headers={**ZH, "HX-Request": "true"}).text
    assert "挂载了“pii-mask”" in pane
    assert "Attached “pii-mask”" in client.get(f"/applications/{ids['stopped']}/releases").text
    with app.test_request_context(headers=ZH):
        assert releases.shown_note(releases.note("moved down", name="a “b”")) == "将“a “b””下移"
        assert releases.shown_note("Created") == "已创建"
        person = "Attached “pii-mask” by hand, for the audit"
        assert releases.shown_note(person) == person
