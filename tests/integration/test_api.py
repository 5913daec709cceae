"""The REST API, /api/v1: tokens, problem details, object-level access, refused transitions, rate limits,
the OpenAPI 3.1 document, and schemathesis against a running server."""

import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import API, LiveServer, bearer, problem, token_for
from llmapp import secrets_box
from llmapp.extensions import db
from llmapp.models import AccessToken, Application, EnvVar, PluginDocument, RegistryModel, User, utcnow
from llmapp.services import Taken, access_tokens, plugin_documents, plugins, users
from llmapp.services.applications import recommendation_for


def application_body(model, **overrides) -> dict:
    body = {
        "name": "support-bot",
        "model_id": model.id,
        "description": "Answers questions.",
        "max_concurrency": 2,
        "timeout_s": 60,
        "cache_size": 64,
        "batch_size": 2,
        "max_restarts": 3,
        "env": [{"name": "GREETING", "value": "hello"}, {"name": "API_KEY", "value": "sk-1", "secret": True}],
    }
    return {**body, **overrides}


def test_tokens_are_the_only_way_in(app, client, auth, member, factory):
    problem(client.get(f"{API}/applications"), 401)
    auth.login(member)  # a session cookie never authenticates the API
    assert problem(client.get(f"{API}/applications"), 401)["detail"].startswith("Send a personal access token")
    token = token_for(app, member)
    assert client.get(f"{API}/applications", headers=bearer(token)).status_code == 200
    response = client.get(f"{API}/applications", headers=bearer(token + "x"))
    assert problem(response, 401)["detail"] == "This token is unknown, revoked or expired."
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    with app.app_context():
        stored = db.session.scalar(db.select(AccessToken).filter_by(token_hash=access_tokens.digest(token)))
        stored.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    problem(client.get(f"{API}/applications", headers=bearer(token)), 401)
    revoked = token_for(app, member)
    with app.app_context():
        access_tokens.revoke(db.session.get(User, member.id), access_tokens_id(revoked))
    problem(client.get(f"{API}/applications", headers=bearer(revoked)), 401)
    # No CSRF token needed with a bearer token (the app under test enforces CSRF on forms).
    fresh = token_for(app, member)
    created = client.post(f"{API}/applications", json=application_body(factory.model()), headers=bearer(fresh))
    assert created.status_code == 201, created.text
    assert "Set-Cookie" not in created.headers or "session" not in created.headers["Set-Cookie"]


def access_tokens_id(plain: str) -> int:
    return db.session.scalar(db.select(AccessToken.id).filter_by(token_hash=access_tokens.digest(plain)))


def test_every_operation_answers_401_without_a_valid_token(app, client, member):
    """Taken from the OpenAPI document, so an operation added later is checked too."""
    document = client.get(f"{API}/openapi.json").json
    revoked, expired = token_for(app, member), token_for(app, member)
    with app.app_context():
        access_tokens.revoke(db.session.get(User, member.id), access_tokens_id(revoked))
        stored = db.session.get(AccessToken, access_tokens_id(expired))
        stored.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    checked = 0
    for path, operations in document["paths"].items():
        url = re.sub(r"\{\w+\}", "1", path.replace("{application_id}", "x"))  # the other parameters are numbers
        for method in operations:
            for headers in ({}, bearer(revoked), bearer(expired), {"Authorization": "Basic bWU6cHc="}):
                response = getattr(client, method)(url, json={} if method in ("post", "put") else None, headers=headers)
                assert response.status_code == 401, (method, url, headers, response.status_code)
                checked += 1
    assert checked >= 4 * 30


def test_create_read_update_list_and_delete(app, client, member, factory):
    token = bearer(token_for(app, member))
    model = factory.model(name="Qwen")
    created = client.post(f"{API}/applications", json=application_body(model), headers=token)
    assert created.status_code == 201, created.text
    body = created.json
    assert created.headers["Location"] == f"{API}/applications/{body['id']}"
    assert body["status"] == "stopped" and body["model"] == "Qwen" and body["owner"] == member.email
    assert [(v["name"], v["value"], v["secret"]) for v in body["env"]] == [
        ("GREETING", "hello", False),
        ("API_KEY", "••••", True),  # a secret is never sent back
    ]
    assert body["config"]["log_lines"] > 0  # left out: the platform's default
    url = f"{API}/applications/{body['id']}"
    assert client.get(url, headers=token).json["name"] == "support-bot"

    secret_id = body["env"][1]["id"]
    changed = application_body(
        model, name="renamed", env=[{"name": "API_KEY", "value": "", "secret": True, "secret_id": secret_id}]
    )
    updated = client.put(url, json=changed, headers=token)
    assert updated.status_code == 200 and updated.json["name"] == "renamed"
    from llmapp import secrets_box

    with app.app_context():
        (var,) = db.session.get(Application, uuid.UUID(updated.json["id"])).env_vars
        assert secrets_box.decrypt(var.value) == "sk-1"  # kept, never sent

    for i in range(3):
        client.post(f"{API}/applications", json=application_body(model, name=f"app-{i}"), headers=token)
    page = client.get(f"{API}/applications?per_page=2&sort=name", headers=token).json
    assert page["total"] == 4 and page["pages"] == 2 and [a["name"] for a in page["items"]] == ["app-0", "app-1"]
    assert [a["name"] for a in client.get(f"{API}/applications?q=REN", headers=token).json["items"]] == ["renamed"]
    assert client.get(f"{API}/applications?status=running", headers=token).json["total"] == 0
    assert problem(client.get(f"{API}/applications?per_page=1000", headers=token), 422)["errors"]["per_page"]
    assert client.delete(url, headers=token).status_code == 204
    problem(client.get(url, headers=token), 404)


def test_bad_input_comes_back_per_field_and_changes_nothing(app, client, member, factory):
    token = bearer(token_for(app, member))
    model = factory.model()
    bad = application_body(model, max_concurrency=0, restart_policy="sometimes", env=[{"name": "1BAD"}])
    body = problem(client.post(f"{API}/applications", json=bad, headers=token), 422)
    assert body["errors"]["max_concurrency"] == ["Must be between 1 and 1024."]
    assert body["errors"]["env.0.name"] == ["Use letters, digits and _, not starting with a digit."]
    shape = problem(client.post(f"{API}/applications", json={"name": 5, "extra": 1}, headers=token), 422)
    assert set(shape["errors"]) == {"name", "extra"}
    missing = problem(client.post(f"{API}/applications", json={}, headers=token), 422)
    assert missing["errors"] == {"name": ["Name is required."], "model_id": ["Choose a model."]}  # the service's
    nul = client.post(f"{API}/applications", json={**bad, "env": [{"name": "A\x00B"}]}, headers=token)
    assert problem(nul, 422)["errors"] == {
        "env.0.name": ["Contains a NUL character, which can't be stored or passed on."]
    }
    assert problem(client.get(f"{API}/applications?q=a%00", headers=token), 422)["errors"] == {"q": [
        "Contains a NUL character, which can't be stored or passed on."
    ]}  # fmt: skip
    not_json = client.post(f"{API}/applications", data="{", headers={**token, "Content-Type": "application/json"})
    assert problem(not_json, 400)["detail"] == "The request body is not valid JSON."
    listed = client.post(f"{API}/applications", json=[bad], headers=token)
    assert problem(listed, 400)["detail"] == "The request body must be a JSON object."
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0


def test_serving_fields_left_out_are_the_models_recommendation(app, client, member, factory):
    """What the form offers, the API does: only a name and a model are required."""
    token = bearer(token_for(app, member))
    model = factory.model(parameters_billions=7, precision="bf16", context_length=4096)
    with app.app_context():
        recommended = recommendation_for(db.session.get(RegistryModel, model.id)).as_config()
    bare = {"name": "bare", "model_id": model.id, "log_level": None}  # null: as left out (the document says so)
    created = client.post(f"{API}/applications", json=bare, headers=token)
    assert created.status_code == 201, created.text
    assert {field: created.json["config"][field] for field in recommended} == recommended
    assert recommended["max_concurrency"] == 2  # the model's own, not a platform-wide default


def test_a_change_keeps_what_it_leaves_out(app, client, member, factory):
    """PUT with some fields: the others keep their values (never the recommendation, never nothing)."""
    token = bearer(token_for(app, member))
    model = factory.model(parameters_billions=7, precision="bf16", context_length=4096)
    body = application_body(model, timeout_s=900, log_level="DEBUG", max_restarts=7, description="Kept.")
    made = client.post(f"{API}/applications", json=body, headers=token).json
    url = f"{API}/applications/{made['id']}"
    changed = client.put(url, json={"name": "support-bot", "model_id": model.id, "max_concurrency": 3}, headers=token)
    assert changed.status_code == 200, changed.text
    assert changed.json["config"] == {**made["config"], "max_concurrency": 3}
    assert changed.json["description"] == "Kept." and changed.json["env"] == made["env"]  # the secret too
    with app.app_context():
        secret = db.session.scalar(db.select(EnvVar).filter_by(application_id=uuid.UUID(made["id"]), name="API_KEY"))
        assert secrets_box.decrypt(secret.value) == "sk-1"
    emptied = client.put(url, json={"name": "support-bot", "model_id": model.id, "env": []}, headers=token)
    assert emptied.json["env"] == [] and emptied.json["config"]["max_concurrency"] == 3  # sent: the whole list


def test_a_name_taken_meanwhile_is_409_not_a_500(app, client, factory, member, monkeypatch):
    """Between a service's check and its commit, another request takes the value: the database's unique
    constraint catches it, and the answer is the same Taken (409 at its field), the session usable."""
    admin = factory.user("root@example.com", admin=True)
    token = bearer(token_for(app, admin))
    factory.user("taken@example.com")
    monkeypatch.setattr(users, "find_by_email", lambda email: None)  # the other request had not committed
    raced = client.post(f"{API}/users", json={"email": "Taken@example.com", "password": "p" * 12}, headers=token)
    assert problem(raced, 409)["errors"] == {"email": ["A user with the email taken@example.com already exists."]}
    monkeypatch.undo()
    assert client.get(f"{API}/users", headers=token).status_code == 200
    with app.app_context():
        owner = db.session.get(User, member.id)
        plugin = plugins.create(owner, {"name": "kb", "type": "knowledge_retrieval"})
        assert plugin.documents == []  # what the service's own check sees
        with db.engine.begin() as other:  # another request, committed meanwhile
            other.execute(db.insert(PluginDocument).values(plugin_id=plugin.id, name="faq.md", text="A.", size=2))
        with pytest.raises(Taken) as taken:
            plugin_documents.add_document(plugin, owner, "faq.md", b"# Q\n\nA.")
        assert taken.value.errors["document"][0].startswith("The plugin already has a document named")
        assert db.session.scalars(db.select(PluginDocument.text)).all() == ["A."]


def test_another_members_objects_are_404_and_admin_operations_403(app, client, factory, member):
    other = factory.user("other@example.com")
    admin = factory.user("root@example.com", admin=True)
    model = factory.model()
    theirs = factory.application(other, model, name="theirs")
    token = bearer(token_for(app, member))
    base = f"{API}/applications/{theirs.id}"
    for method, url, body in (
        ("get", base, None),
        ("put", base, application_body(model)),
        ("delete", base, None),
        ("post", f"{base}/deploy", None),
        ("post", f"{base}/stop", None),
        ("get", f"{base}/keys", None),
        ("post", f"{base}/keys", {"label": "x"}),
        ("delete", f"{base}/keys/1", None),
        ("get", f"{base}/logs", None),
        ("get", f"{base}/logs/stream", None),
        ("get", f"{base}/plugins", None),
        ("post", f"{base}/plugins", {"plugin_id": 1}),
        ("put", f"{base}/plugins/1", {"enabled": False}),
        ("delete", f"{base}/plugins/1", None),
        ("get", f"{base}/metrics", None),
    ):
        response = getattr(client, method)(url, json=body, headers=token)
        assert problem(response, 404)["detail"].startswith("No such"), (method, url)
    assert client.get(base, headers=bearer(token_for(app, admin))).status_code == 200  # an admin sees all
    for method, url in (
        ("post", f"{API}/models"),
        ("put", f"{API}/models/{model.id}"),
        ("delete", f"{API}/models/{model.id}"),
    ):
        response = getattr(client, method)(url, json={"name": "x"} if method != "delete" else None, headers=token)
        assert problem(response, 403)["detail"] == "Only an admin can change the model registry."
    models = client.get(f"{API}/models", headers=token).json["items"]
    assert [m["name"] for m in models] == [model.name]


def test_a_refused_transition_is_409_with_the_status_now(app, client, member, factory):
    token = bearer(token_for(app, member))
    running = factory.application(member, factory.model(), name="busy", status="running")
    url = f"{API}/applications/{running.id}"
    assert problem(client.delete(url, headers=token), 409)["current_status"] == "running"
    moving = factory.application(member, factory.model(), name="moving", status="deploying")
    moving_url = f"{API}/applications/{moving.id}"
    assert problem(client.post(f"{moving_url}/deploy", headers=token), 409)["current_status"] == "deploying"
    assert (
        problem(client.put(moving_url, json=application_body(factory.model()), headers=token), 409)["current_status"]
        == "deploying"
    )
    stopped = factory.application(member, factory.model(), name="idle")
    assert (
        problem(client.post(f"{API}/applications/{stopped.id}/stop", headers=token), 409)["current_status"] == "stopped"
    )


@pytest.mark.parametrize("config_overrides", [{"API_RATE_LIMIT": "5 per minute", "RATELIMIT_ENABLED": True}])
def test_each_token_has_its_own_rate_limit(app, client, member, factory, config_overrides):
    first, second = bearer(token_for(app, member)), bearer(token_for(app, member))
    answers = [client.get(f"{API}/models", headers=first) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    limited = problem(answers[-1], 429)
    assert int(answers[-1].headers["Retry-After"]) > 0 and "Too many requests" in limited["detail"]
    assert client.get(f"{API}/models", headers=second).status_code == 200


def test_the_openapi_document_is_3_1_and_names_every_operation(client):
    document = client.get(f"{API}/openapi.json").json
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A personal access token.",
    }
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    for expected in (
        ("/api/v1/applications", "get"),
        ("/api/v1/applications", "post"),
        ("/api/v1/applications/{application_id}", "put"),
        ("/api/v1/applications/{application_id}/deploy", "post"),
        ("/api/v1/applications/{application_id}/logs", "get"),
        ("/api/v1/models", "post"),
    ):
        assert expected in operations
    limits = document["components"]["schemas"]
    application_in = next(v for k, v in limits.items() if k.startswith("ApplicationIn"))
    assert application_in["properties"]["max_concurrency"]["maximum"] == 1024  # read from the service's bounds


CONTRACT = Path(__file__).with_name("schemathesis.toml")  # the few rules a JSON Schema can't say


def test_schemathesis_finds_the_api_as_its_document_says(app, factory, member, tmp_path):
    """Schemathesis (from PyPI) against the live document of a running server: every phase (the stateful
    one walks the document's links from each create), every check (server errors, answers off their
    schema, schema-valid requests refused, invalid ones accepted, undeclared methods without Allow,
    resources still there after their delete …), a fixed seed, a budget of examples and of time. Every
    operation the document has is covered: a resource added later is tested as soon as it is routed."""
    admin = factory.user("root@example.com", admin=True)
    factory.application(member, factory.model(name="Qwen"), name="seed")
    token = token_for(app, admin)
    with LiveServer(app) as server:
        # Each phase with a time budget of its own: in one budget, fuzzing repeats until it is spent and on a
        # loaded machine left the stateful phase no time at all (and coverage, the fuzzing phase none).
        for phases, budget in (("examples,coverage", 45), ("fuzzing", 45), ("stateful", 45)):
            done = subprocess.run(
                [
                    sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONTRACT), "run",
                    f"{server.url}{API}/openapi.json", "--checks", "all", "--seed", "1", "--phases", phases,
                    "--max-examples", "10", "--max-time", str(budget),
                    "-H", f"Authorization: Bearer {token}", "--request-timeout", "30",
                    "--exclude-path-regex", ".*/logs/stream$",  # an endless stream (tested in the flow below)
                    "--no-color",
                ],
                capture_output=True, text=True, timeout=900, cwd=tmp_path,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
            summary = done.stdout[done.stdout.rindex("SUMMARY") :]
            ran = [name for name in ("Coverage", "Fuzzing", "Stateful") if name.lower() in phases]
            assert all(f"✅ {phase}" in summary for phase in ran), summary  # each ran
            assert int(re.search(r"(\d+) generated", summary)[1]) > 0, summary


def test_plugins_and_an_applications_chain(app, client, member, factory):
    token = bearer(token_for(app, member))
    types = client.get(f"{API}/plugin-types", headers=token).json["items"]
    assert [t["name"] for t in types][:2] == ["system_prompt", "content_filter"] and types[2]["config_schema"][
        "properties"
    ]
    bad = {"name": "pii", "type": "pii_redaction", "config": {"region": "CHINA"}}
    body = problem(client.post(f"{API}/plugins", json=bad, headers=token), 422)
    assert body["errors"]["config.region"] == ["A two-letter region code, e.g. CN."]
    pii = client.post(f"{API}/plugins", json={**bad, "config": {"region": "CN"}}, headers=token)
    assert pii.status_code == 201 and pii.json["config"]["region"] == "CN"
    hook = {"name": "audit", "type": "webhook_audit", "config": {"url": "http://audit/hook", "secret": "s" * 20}}
    audit = client.post(f"{API}/plugins", json=hook, headers=token).json
    assert audit["config"]["secret"] == "••••"  # never sent back
    rag = client.post(f"{API}/plugins", json={"name": "kb", "type": "knowledge_retrieval"}, headers=token).json
    added = client.post(
        f"{API}/plugins/{rag['id']}/documents", json={"name": "faq.md", "text": "# Q\n\nA."}, headers=token
    )
    assert added.status_code == 201 and added.json["name"] == "faq.md" and added.json["size"] == 7
    assert added.headers["Location"].endswith(f"/plugins/{rag['id']}/documents/{added.json['id']}")
    listed = client.get(f"{API}/plugins/{rag['id']}", headers=token).json["documents"]
    assert listed == [added.json]
    refused = client.post(f"{API}/plugins/{rag['id']}/documents", json={"name": "x.pdf", "text": "x"}, headers=token)
    assert "Upload a text or Markdown file" in problem(refused, 422)["detail"]

    application = factory.application(member, factory.model(), name="front-desk")
    chain_url = f"{API}/applications/{application.id}/plugins"
    for plugin_id in (pii.json["id"], audit["id"]):
        assert client.post(chain_url, json={"plugin_id": plugin_id}, headers=token).status_code == 201
    step = f"{chain_url}/{audit['id']}"
    moved = client.put(step, json={"move": "up"}, headers=token).json["items"]
    assert [s["name"] for s in moved] == ["audit", "pii"]
    wrong = client.put(f"{chain_url}/{pii.json['id']}", json={"overrides": {"region": "Hong Kong"}}, headers=token)
    assert problem(wrong, 422)["errors"]["config.region"] == ["A two-letter region code, e.g. CN."]
    ok = client.put(
        f"{chain_url}/{pii.json['id']}", json={"overrides": {"region": "HK"}, "enabled": False}, headers=token
    )
    assert ok.json["items"][1]["overrides"] == {"region": "HK"} and ok.json["items"][1]["enabled"] is False
    in_use = problem(client.delete(f"{API}/plugins/{audit['id']}", headers=token), 409)
    assert "front-desk" in in_use["detail"]
    assert client.delete(step, headers=token).status_code == 204
    assert [s["name"] for s in client.get(chain_url, headers=token).json["items"]] == ["pii"]
    assert client.delete(f"{API}/plugins/{audit['id']}", headers=token).status_code == 204


def test_plugins_follow_the_sharing_model(app, client, member, factory):
    admin = factory.user("root@example.com", admin=True)
    other = factory.user("other@example.com")
    admin_token, member_token, other_token = (bearer(token_for(app, u)) for u in (admin, member, other))
    published = client.post(
        f"{API}/plugins", json={"name": "house", "type": "system_prompt", "published": True}, headers=admin_token
    ).json
    private = client.post(f"{API}/plugins", json={"name": "mine", "type": "system_prompt"}, headers=other_token).json
    names = [p["name"] for p in client.get(f"{API}/plugins", headers=member_token).json["items"]]
    assert names == ["house"]
    problem(client.get(f"{API}/plugins/{private['id']}", headers=member_token), 404)
    problem(client.delete(f"{API}/plugins/{private['id']}", headers=member_token), 404)
    change = {"name": "house", "type": "system_prompt"}
    assert problem(client.put(f"{API}/plugins/{published['id']}", json=change, headers=member_token), 403)
    application = factory.application(member, factory.model(), name="bot")
    refused = client.post(
        f"{API}/applications/{application.id}/plugins", json={"plugin_id": private["id"]}, headers=member_token
    )
    problem(refused, 404)
    mine = client.post(
        f"{API}/plugins", json={"name": "x", "type": "system_prompt", "published": True}, headers=member_token
    )
    assert mine.json["published"] is False  # only admins publish


def test_admins_manage_users_through_the_api(app, client, member, factory):
    admin = factory.user("root@example.com", admin=True)
    admin_token, member_token = bearer(token_for(app, admin)), bearer(token_for(app, member))
    for method, url in (
        ("get", "/users"),
        ("post", "/users"),
        ("put", f"/users/{member.id}"),
        ("post", f"/users/{member.id}/reset-password"),
    ):
        body = {"email": "x@example.com", "password": "long enough"} if (method, url) == ("post", "/users") else None
        problem(
            getattr(client, method)(
                f"{API}{url}", json=body if body or method == "put" else None, headers=member_token
            ),
            403,
        )
    bad = client.post(f"{API}/users", json={"email": "nope", "password": "long enough"}, headers=admin_token)
    assert problem(bad, 422)["errors"]["email"] == ["“nope” is not an email address."]
    made = client.post(
        f"{API}/users", json={"email": "new@example.com", "password": "long enough"}, headers=admin_token
    )
    assert made.status_code == 201 and made.json["admin"] is False
    last = client.put(f"{API}/users/{admin.id}", json={"admin": False}, headers=admin_token)
    assert "last admin" in problem(last, 409)["detail"]
    disabled = client.put(f"{API}/users/{member.id}", json={"disabled": True}, headers=admin_token)
    assert disabled.json["disabled"] is True
    problem(client.get(f"{API}/applications", headers=member_token), 401)  # their tokens stopped at once
    emails = [u["email"] for u in client.get(f"{API}/users", headers=admin_token).json["items"]]
    assert emails == sorted(["root@example.com", "new@example.com", member.email])
    password = client.post(f"{API}/users/{made.json['id']}/reset-password", headers=admin_token).json["password"]
    assert len(password) >= 12


def test_a_token_anywhere_but_the_authorization_header_opens_nothing(app, client, member):
    """Query strings land in proxies' and servers' access logs; cookies are sent by browsers unasked."""
    token = token_for(app, member)
    for name in ("access_token", "token", "api_key", "authorization"):
        problem(client.get(f"{API}/applications?{name}={token}"), 401)
        cookie_client = app.test_client()
        cookie_client.set_cookie(name, token)
        problem(cookie_client.get(f"{API}/applications"), 401)
    problem(client.get(f"{API}/applications", headers={"X-Api-Key": token}), 401)
    assert client.get(f"{API}/applications", headers=bearer(token)).status_code == 200


def test_a_name_another_of_yours_holds_is_409_at_its_field_wherever_it_is_caught(app, client, member, factory):
    """A rename onto a name the owner already uses (another case of it): the database's unique index says
    so (for a plugin, at the flush before its servers are told), and the answer is 409 at the name, never
    a 500; nothing changed."""
    token = bearer(token_for(app, member))
    first = client.post(f"{API}/plugins", json={"name": "House Style", "type": "system_prompt"}, headers=token)
    second = client.post(f"{API}/plugins", json={"name": "other", "type": "system_prompt"}, headers=token).json
    renamed = client.put(f"{API}/plugins/{second['id']}", json={"name": "house style", "type": "system_prompt"},
                         headers=token)  # fmt: skip
    assert problem(renamed, 409)["errors"] == {"name": ["You already have a plugin named “house style”."]}
    assert client.get(f"{API}/plugins/{second['id']}", headers=token).json["name"] == "other"
    again = client.post(f"{API}/plugins", json={"name": "HOUSE STYLE", "type": "system_prompt"}, headers=token)
    assert first.status_code == 201 and problem(again, 409)["errors"]["name"]
    model = factory.model()
    made = client.post(f"{API}/applications", json={"name": "bot", "model_id": model.id}, headers=token)
    assert made.status_code == 201  # the serving fields: the model's recommendation
    twin = client.post(f"{API}/applications", json={"name": "BOT", "model_id": model.id}, headers=token)
    assert problem(twin, 409)["errors"] == {"name": ["You already have an application named “BOT”."]}


def test_a_refusal_speaks_the_requests_language_and_keeps_what_scripts_match_on(app, client, member, factory):
    """Accept-Language chooses the words of a problem document (its detail, its fields' messages): the
    Chinese catalog's (compiled, as `make test` does); its type, title, status, field names and
    current_status stay what they are in English."""
    token = bearer(token_for(app, member))
    chinese = {**token, "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
    bad = application_body(factory.model(), max_concurrency=0, env=[{"name": "1BAD"}])
    in_english = problem(client.post(f"{API}/applications", json=bad, headers=token), 422)
    in_chinese = problem(client.post(f"{API}/applications", json=bad, headers=chinese), 422)
    stable = ("type", "title", "status")
    assert {key: in_chinese[key] for key in stable} == {key: in_english[key] for key in stable}
    assert set(in_chinese["errors"]) == set(in_english["errors"]) == {"max_concurrency", "env.0.name"}
    assert in_english["detail"] == "The request has invalid fields."
    assert in_english["errors"]["max_concurrency"] == ["Must be between 1 and 1024."]
    stopped = factory.application(member, factory.model(), name="idle")
    refused = problem(client.post(f"{API}/applications/{stopped.id}/stop", headers=chinese), 409)
    assert refused["current_status"] == "stopped"  # data, in every language
    with app.test_request_context(f"{API}/applications", headers={"Accept-Language": "zh-CN"}):
        from flask_babel import gettext

        expected = {
            "detail": gettext("The request has invalid fields."),
            "max_concurrency": gettext("Must be between %(low)s and %(high)s.", low=1, high=1024),
            "env.0.name": gettext("Use letters, digits and _, not starting with a digit."),
            "refused": gettext("Only a running application can be stopped; this one is %(status)s.")
            % {"status": gettext("stopped")},
        }
    assert all(re.search("[\u4e00-\u9fff]", text) for text in expected.values()), expected  # the catalog is built
    assert in_chinese["detail"] == expected["detail"]
    assert in_chinese["errors"] == {
        "max_concurrency": [expected["max_concurrency"]],
        "env.0.name": [expected["env.0.name"]],
    }
    assert refused["detail"] == expected["refused"] and "stopped" not in refused["detail"]  # the status in words
    # The API's own refusals too, before any service runs: an unknown token, a body that isn't JSON.
    unknown = problem(client.get(f"{API}/applications", headers={**chinese, "Authorization": "Bearer nope"}), 401)
    assert unknown["detail"] == "此令牌不存在、已吊销或已过期。"
    not_json = client.post(f"{API}/applications", data="{", headers={**chinese, "Content-Type": "application/json"})
    assert problem(not_json, 400)["detail"] == "请求体不是有效的 JSON。"
