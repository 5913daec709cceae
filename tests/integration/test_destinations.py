"""Where webhooks may go (llmapp/netguard.py): refused destinations at save time (form, API, overrides)
and again at send time (after resolution, before any connection, on every connection); who may
override a plugin's destination; and the names of retrieval documents.

No test sends traffic anywhere but loopback: a refused destination is refused before a connection is
opened, which a connection hook proves, and a name that "resolves" elsewhere does so through a
resolver hook whose connections the hook refuses."""

import http.server
import logging
import socket
import threading

import httpcore
import pytest

from conftest import API, HX, QuietHTTPServer, Receiver, bearer, problem, resolver, token_for, wait_for
from llmapp import netguard
from llmapp.extensions import db
from llmapp.models import Application, ApplicationPlugin, Plugin, PluginDocument
from llmapp.runtime.plugins import webhook
from llmapp.runtime.spec import ServerSpec, ServingConfig

SECRET = "a-signing-secret-of-16+"


# --- at save time: the Plugins tab, the API, an application's overrides ---------------------------


def webhook_form(url, **fields):
    return {
        "name": "audit",
        "type": "webhook_audit",
        "enabled": "y",
        "config-url": url,
        "config-secret": SECRET,
        **fields,
    }


def test_the_form_refuses_a_private_destination_at_the_field(logged_in, app):
    for url in ("http://169.254.169.254/", "http://[::1]:6379/", "http://2130706433/"):
        refused = logged_in.post("/plugins/new", data=webhook_form(url), headers=HX)
        assert refused.status_code == 422 and "webhooks can&#39;t go there" in refused.text, url
        assert url in refused.text  # what was typed stays
    with app.app_context():
        assert db.session.scalar(db.select(Plugin)) is None
    assert logged_in.post("/plugins/new", data=webhook_form("https://audit.example.com/hook")).status_code == 303


@pytest.mark.parametrize("config_overrides", [{"WEBHOOK_ALLOWED_DESTINATIONS": "127.0.0.1,audit.internal"}])
def test_an_admins_allow_list_lets_a_private_destination_be_saved(logged_in, app, config_overrides):
    assert logged_in.post("/plugins/new", data=webhook_form("http://127.0.0.1:9/hook")).status_code == 303
    assert (
        logged_in.post("/plugins/new", data=webhook_form("http://10.0.0.1/", name="other"), headers=HX).status_code
        == 422
    )


def test_the_api_refuses_a_private_destination_at_its_field(app, client, member):
    token = bearer(token_for(app, member))
    for url in ("http://10.0.0.1/hook", "http://localhost/", "http://user:pw@example.com/"):
        hook = {"name": "audit", "type": "webhook_audit", "config": {"url": url, "secret": SECRET}}
        body = problem(client.post(f"{API}/plugins", json=hook, headers=token), 422)
        assert list(body["errors"]) == ["config.url"], url


def test_a_host_that_cant_be_sent_is_refused_at_the_field(logged_in, app, client, member):
    refused = logged_in.post("/plugins/new", data=webhook_form("http://a☃b.example/"), headers=HX)
    assert refused.status_code == 422 and "is not a valid host name (it can&#39;t be encoded for DNS)" in refused.text
    token = bearer(token_for(app, member))
    for url in ("http://ⅼocalhost/", "http://xn--/"):
        hook = {"name": "audit", "type": "webhook_audit", "config": {"url": url, "secret": SECRET}}
        body = problem(client.post(f"{API}/plugins", json=hook, headers=token), 422)
        assert list(body["errors"]) == ["config.url"], url
    with app.app_context():
        assert db.session.scalar(db.select(Plugin)) is None


def attach(app, application, plugin_id):
    with app.app_context():
        db.session.add(ApplicationPlugin(application_id=application.id, plugin_id=plugin_id, position=1, config={}))
        db.session.commit()


def add_plugin(app, owner, published=False, url="https://admin.example.com/audit") -> Plugin:
    from llmapp import secrets_box

    with app.app_context():
        config = {"url": url, "secret": secrets_box.encrypt(SECRET)}
        plugin = Plugin(name="audit", type="webhook_audit", config=config, created_by_id=owner.id, published=published)
        db.session.add(plugin)
        db.session.commit()
        db.session.refresh(plugin)
        db.session.expunge(plugin)
        return plugin


def chain_config(app, application) -> dict:
    from llmapp.services import plugins

    with app.app_context():
        return plugins.chain_document(db.session.get(Application, application.id))["plugins"][0]["config"]


def test_an_override_of_a_destination_is_checked_too(logged_in, app, factory, member):
    plugin = add_plugin(app, member)
    application = factory.application(member, factory.model())
    attach(app, application, plugin.id)
    base = f"/applications/{application.id}/plugins/{plugin.id}/overrides"
    refused = logged_in.post(base, data={"config-url": "http://10.0.0.1/"}, headers=HX)
    assert refused.status_code == 422 and "webhooks can&#39;t go there" in refused.text
    # Their own plugin: they may send it elsewhere for this application.
    assert logged_in.post(base, data={"config-url": "https://mine.example.com/"}, headers=HX).status_code == 200
    assert chain_config(app, application)["url"] == "https://mine.example.com/"


def test_a_published_plugins_destination_is_not_a_members_to_override(app, client, auth, factory, member, admin):
    published = add_plugin(app, admin, published=True)
    application = factory.application(member, factory.model())
    attach(app, application, published.id)
    auth.login(member)
    # The form: the field shows the plugin's URL; changing it is refused there, the rest may change.
    base = f"/applications/{application.id}/plugins"
    form = {"config-url": "https://member.example.com/", "config-timeout_s": "5", "config-retries": "1"}
    refused = client.post(f"{base}/{published.id}/overrides", data=form, headers=HX)
    assert refused.status_code == 422 and "Where this plugin sends its data is set by its owner" in refused.text
    assert chain_config(app, application)["url"] == "https://admin.example.com/audit"
    kept = {**form, "config-url": "https://admin.example.com/audit"}
    assert client.post(f"{base}/{published.id}/overrides", data=kept, headers=HX).status_code == 200
    assert chain_config(app, application)["retries"] == 1
    # The API: the same rule, at config.url.
    token = bearer(token_for(app, member))
    step = f"{API}/applications/{application.id}/plugins/{published.id}"
    body = problem(client.put(step, json={"overrides": {"url": "https://member.example.com/"}}, headers=token), 422)
    assert list(body["errors"]) == ["config.url"]
    assert chain_config(app, application)["url"] == "https://admin.example.com/audit"


def test_a_destination_override_stored_before_the_rule_is_ignored(app, factory, member, admin):
    published = add_plugin(app, admin, published=True)
    application = factory.application(member, factory.model())
    with app.app_context():
        stored = {"url": "https://member.example.com/steal", "retries": 1, "secret": "mine-mine-mine-mine"}
        db.session.add(ApplicationPlugin(application_id=application.id, plugin_id=published.id, config=stored))
        db.session.commit()
    config = chain_config(app, application)  # what deploy and every change publish
    assert config["url"] == "https://admin.example.com/audit" and config["secret"] == SECRET
    assert config["retries"] == 1  # an override it may have still applies


# --- at send time: resolved, checked, pinned, on every connection ---------------------------------


@pytest.fixture
def connections(monkeypatch):
    """Every TCP connection the sender opens, recorded; none to an address off loopback is opened."""
    opened = []
    connect = httpcore.SyncBackend.connect_tcp

    def recording(self, host, port, *args, **kwargs):
        opened.append((host, port))
        if not host.startswith("127."):
            raise httpcore.ConnectError("the tests connect to loopback only")
        return connect(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", recording)
    return opened


def deliver(sender, url, expect="delivered"):
    sender.send(url, SECRET, {"request_id": "r1"})
    wait_for(lambda: sender.delivered + sender.failed == 1, 30, 0.02, f"the delivery to be {expect}")


def deliver_resolved(resolve, url, expect, caplog):
    """One delivery by a sender (one retry) whose names ``resolve`` answers, its log captured; the sender."""
    sender = webhook.WebhookSender(retries=1, backoff_s=0.01, guard=netguard.Guard(resolve=resolve))
    try:
        with caplog.at_level(logging.WARNING, "llmapp.server"):
            deliver(sender, url, expect)
    finally:
        sender.close()
    return sender


@pytest.fixture
def caplog(caplog, monkeypatch):
    """The sender's log lines (the migrations' logging configuration disables loggers that exist then)."""
    monkeypatch.setattr(logging.getLogger("llmapp.server"), "disabled", False)
    return caplog


def refusals(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "llmapp.server" and " refused: " in r.getMessage()]


def test_a_name_that_resolves_to_loopback_is_refused_without_a_connection(connections, caplog):
    receiver = Receiver()
    port = receiver.server.server_address[1]
    resolve = resolver("127.0.0.1")
    sender = webhook.WebhookSender(retries=2, backoff_s=0.01, guard=netguard.Guard(resolve=resolve))
    plain = webhook.WebhookSender()
    try:
        with caplog.at_level(logging.WARNING, "llmapp.server"):
            deliver(sender, f"http://hooks.example.com:{port}/hook", "refused")
            deliver(plain, f"http://localhost:{port}/hook", "refused")  # the real resolver
    finally:
        sender.close()
        plain.close()
        receiver.close()
    assert connections == [] and receiver.received == []
    assert sender.refused == 1 and resolve.calls == ["hooks.example.com"]  # refused: not retried
    first, second = refusals(caplog)
    assert "“hooks.example.com” resolves to a loopback address: webhooks can't go there" in first
    assert "“localhost” is this host itself" in second
    assert not any(word in first + second for word in ("Connect", "Errno", "timed out", "answered"))


def test_each_connection_goes_to_the_address_checked_for_it(connections, caplog):
    """DNS rebinding: the first answer is on the internet, the next one loopback. The first connection
    goes to the address that was checked (never to the name again); the retry resolves anew, and is
    refused before it connects."""
    resolve = resolver("8.8.8.8", "127.0.0.1")
    sender = deliver_resolved(resolve, "http://rebind.example.com:8080/hook", "refused", caplog)
    assert connections == [("8.8.8.8", 8080)] and resolve.calls == ["rebind.example.com"] * 2
    assert sender.refused == 1 and "resolves to a loopback address" in refusals(caplog)[0]


def test_an_allowed_name_is_delivered_to_the_address_it_was_checked_at(connections):
    receiver = Receiver()
    port = receiver.server.server_address[1]
    resolve = resolver("127.0.0.1")
    sender = webhook.WebhookSender(guard=netguard.Guard(("127.0.0.1",), resolve=resolve))
    try:
        deliver(sender, f"http://hooks.example.com:{port}/hook")
    finally:
        sender.close()
        receiver.close()
    assert sender.delivered == 1 and connections == [("127.0.0.1", port)]
    ((headers, _),) = receiver.received
    assert headers["Host"] == f"hooks.example.com:{port}"  # the URL's name, on the checked address


def test_a_stored_url_with_user_info_is_refused_at_send_time(connections, caplog):
    sender = webhook.WebhookSender(allow="127.0.0.1")
    try:
        with caplog.at_level(logging.WARNING, "llmapp.server"):
            deliver(sender, "http://user:pw@127.0.0.1:9/hook", "refused")
    finally:
        sender.close()
    assert sender.refused == 1 and connections == [] and "user name or password" in refusals(caplog)[0]


class Redirecting(http.server.BaseHTTPRequestHandler):
    location = ""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(307)
        self.send_header("Location", self.location)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_not_followed(connections, caplog):
    target = Receiver()
    Redirecting.location = target.url
    redirecting = QuietHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=redirecting.serve_forever, daemon=True).start()
    sender = webhook.WebhookSender(retries=0, allow="127.0.0.1")
    try:
        with caplog.at_level(logging.WARNING, "llmapp.server"):
            deliver(sender, f"http://127.0.0.1:{redirecting.server_address[1]}/hook", "failed")
    finally:
        sender.close()
        redirecting.shutdown()
        target.close()
    assert sender.failed == 1 and target.received == []
    assert any("answered 307" in r.getMessage() for r in caplog.records)


def test_the_allow_list_reaches_the_server_in_its_spec(app, factory, member):
    from llmapp.services import server_spec

    app.config["WEBHOOK_ALLOWED_DESTINATIONS"] = "127.0.0.1, Audit.internal"
    application = factory.application(member, factory.model(engine="openai", base_url="http://vllm/v1"))
    with app.test_request_context(), app.app_context():
        spec = server_spec.spec_for(db.session.get(Application, application.id), 18000)
    assert spec.webhook_allow == ("127.0.0.1", "audit.internal")
    assert ServerSpec.from_json(spec.to_json()).webhook_allow == ("127.0.0.1", "audit.internal")
    assert ServerSpec("a", "a", "openai", ServingConfig(), 1).webhook_allow == ()  # by default: none


# --- the names of retrieval documents ----------------------------------------------------------------


BAD_NAMES = {
    "notes\n.md": "control characters",
    "notes\r\nINFO forged line.md": "control characters",
    "\x1b[31mred.md": "control characters",
    "evil\u202edm.txt": "control characters",  # a right-to-left override (Cf)
    "tab\there.md": "control characters",
    "line\u2028break.md": "control characters",
    " leading.md": "begin or end with a space",
    "trailing.md ": "begin or end with a space",
    "../etc/passwd.md": "can't contain /",
    "C:\\docs\\leave.md": "can't contain /",
    "x" * 256 + ".md": "at most 255 characters",
}


def test_the_api_refuses_bad_document_names(app, client, member):
    token = bearer(token_for(app, member))
    rag = client.post(f"{API}/plugins", json={"name": "kb", "type": "knowledge_retrieval"}, headers=token).json
    url = f"{API}/plugins/{rag['id']}/documents"
    for name, words in BAD_NAMES.items():
        body = problem(client.post(url, json={"name": name, "text": "# Q\n\nA."}, headers=token), 422)
        assert words in body["detail"] and name not in body["detail"], repr(name)
    assert problem(client.post(url, json={"name": "nul\x00.md", "text": "x"}, headers=token), 422)
    added = client.post(url, json={"name": "员工手册 v2.md", "text": "# Q\n\nA."}, headers=token)
    assert added.status_code == 201
    with app.app_context():
        assert db.session.scalars(db.select(PluginDocument.name)).all() == ["员工手册 v2.md"]


def test_the_form_refuses_a_bad_document_name(logged_in, app):
    import io

    logged_in.post("/plugins/new", data={"name": "kb", "type": "knowledge_retrieval", "enabled": "y"})
    with app.app_context():
        plugin = db.session.scalar(db.select(Plugin))
    refused = logged_in.post(
        f"/plugins/{plugin.id}/documents",
        data={"document": (io.BytesIO(b"# Leave\n"), "leave\u202egpj.md")},  # shows as "leavedm.jpg"
        headers=HX,
        content_type="multipart/form-data",
    )
    assert refused.status_code == 422 and "can&#39;t contain line breaks, tabs or other control" in refused.text


def test_a_name_that_does_not_resolve_is_a_failure_retried_not_a_refusal(connections, caplog):
    def resolve(host, port, type=0):  # noqa: A002 - socket.getaddrinfo's name
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    sender = deliver_resolved(resolve, "http://hooks.example.com/hook", "failed", caplog)
    assert sender.refused == 0 and connections == []
    assert any("failed after 2 attempts" in r.getMessage() for r in caplog.records)


def test_a_stored_url_that_cant_be_sent_is_refused_and_the_sender_goes_on(connections, caplog):
    """URLs saved before the check (httpx can't encode their host): each is refused, not retried, and
    the one sender thread of the server delivers the next summary."""
    receiver = Receiver()
    sender = webhook.WebhookSender(retries=2, backoff_s=0.01, allow="127.0.0.1")
    try:
        with caplog.at_level(logging.WARNING, "llmapp.server"):
            for url in ("http://ⅼocalhost/", "http://xn--/", "http://a☃b.example/"):
                sender.send(url, SECRET, {"request_id": "bad"})
            sender.send(receiver.url, SECRET, {"request_id": "good"})
            wait_for(lambda: sender.delivered == 1, 30, 0.02, "the good summary")
        alive = sender.thread.is_alive()
    finally:
        sender.close()
        receiver.close()
    assert alive and sender.refused == 3 and sender.failed == 3
    assert len(receiver.received) == 1 and b'"good"' in receiver.received[0][1]
    assert connections == [("127.0.0.1", receiver.server.server_address[1])]
    assert all("not a valid host name" in line for line in refusals(caplog))


def test_whatever_goes_wrong_with_one_delivery_the_sender_goes_on(connections, caplog):
    """An error no one foresaw (here, from the resolver) is logged with its type and drops that one
    summary; the thread delivers the next."""

    def resolve(host, port, type=0):  # noqa: A002 - socket.getaddrinfo's name
        if host == "broken.example.com":
            raise RuntimeError("an unforeseen failure")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    receiver = Receiver()
    port = receiver.server.server_address[1]
    sender = webhook.WebhookSender(retries=2, backoff_s=0.01, guard=netguard.Guard(("127.0.0.1",), resolve=resolve))
    try:
        with caplog.at_level(logging.WARNING, "llmapp.server"):
            sender.send(f"http://broken.example.com:{port}/hook", SECRET, {"request_id": "lost"})
            sender.send(f"http://hooks.example.com:{port}/hook", SECRET, {"request_id": "next"})
            wait_for(lambda: sender.delivered == 1, 30, 0.02, "the next summary")
        alive = sender.thread.is_alive()
    finally:
        sender.close()
        receiver.close()
    assert alive and sender.failed == 1 and len(receiver.received) == 1
    (line,) = [r.getMessage() for r in caplog.records if "broken.example.com" in r.getMessage()]
    assert "RuntimeError: an unforeseen failure" in line and "the summary is dropped" in line
