"""The audit log (services/audit.py): each kind of change, made through the pages, the API or the CLI,
writes its entry with who, from where and what changed; no secret's value is ever in one; members read
only the entries about their own things; work no person asked for (a job) writes none."""

import json
import re

from conftest import HX, bearer, plugin_form, stored_plugin, token_for
from llmapp.extensions import db
from llmapp.models import Application, AuditEntry
from llmapp.services import audit, lifecycle
from test_applications import form_data

SECRETS = ("sk-very-secret-value", "s3cret-signing-key!", "brand-new-password-1")


def entries(app) -> list[AuditEntry]:
    with app.app_context():
        found = db.session.scalars(db.select(AuditEntry).order_by(AuditEntry.id)).all()
        db.session.expunge_all()
        return found


def actions(app) -> list[str]:
    return [entry.action for entry in entries(app)]


def test_each_kind_of_change_writes_its_entry(app, client, auth, member, admin, factory, runner):
    model = factory.model(name="llama-small")
    auth.login(member)
    # An application: created, edited (its secret variable changed), its limits, keys, deployed, deleted.
    created = client.post(
        "/applications/new",
        data=form_data(model, **{"env-0-name": "API_KEY", "env-0-value": SECRETS[0], "env-0-secret": "y"}),
    )
    assert created.status_code == 303
    with app.app_context():
        application = db.session.scalar(db.select(Application))
        application_id = application.id
    edited = form_data(model, description="Now in French.", max_concurrency="3")
    edited.update({"env-0-name": "API_KEY", "env-0-value": "another-secret-value", "env-0-secret": "y"})
    assert client.post(f"/applications/{application_id}/edit", data=edited).status_code == 303
    client.post(f"/applications/{application_id}/keys", data={"label": "laptop", "rpm": "5"}, headers=HX)
    client.post(f"/applications/{application_id}/limits", data={"day": "100000"}, headers=HX)
    key_id = int(re.search(r"/keys/(\d+)/revoke", client.get(f"/applications/{application_id}").text).group(1))
    client.post(f"/applications/{application_id}/keys/{key_id}/revoke", headers=HX)
    # A plugin with a secret, attached and detached.
    webhook = plugin_form(
        "webhook_audit", name="hook", **{"config-url": "https://audit.example/hook", "config-secret": SECRETS[1]}
    )
    assert client.post("/plugins/new", data=webhook).status_code == 303
    plugin = stored_plugin(app, "hook")
    client.post(f"/applications/{application_id}/plugins", data={"plugin_id": plugin.id}, headers=HX)
    client.post(f"/applications/{application_id}/plugins/{plugin.id}/detach", headers=HX)
    # A token made on the account page acts through the API: its changes name it.
    made = client.post("/users/account/tokens", data={"name": "ci", "expires_days": "30"}, headers=HX)
    plain_token = re.search(r"(llmapp_pat_[A-Za-z0-9_-]{40,})", made.text).group(1)
    answer = client.post(f"/api/v1/applications/{application_id}/deploy", headers=bearer(plain_token))
    assert answer.status_code in (200, 202), answer.text
    # An admin: a model, a person's limits and password, through the page; the CLI as the operator.
    auth.logout()
    auth.login(admin)
    client.post(f"/users/{member.id}/limits", data={"rpm": "30"}, headers=HX)
    client.post(f"/users/{member.id}/reset-password", headers=HX)
    made_user = runner.invoke(args=["users", "create", "new@example.org", "--password-stdin"], input=SECRETS[2] + "\n")
    assert made_user.exit_code == 0, made_user.output
    assert (
        runner.invoke(args=["apps", "keys", "create", "support-bot", "--label", "cli", "--tpm", "500"]).exit_code == 0
    )

    found = entries(app)
    by_action = {}
    for entry in found:
        by_action.setdefault(entry.action, []).append(entry)
    for action in (
        "application.create", "application.update", "key.create", "key.update", "plugin.create",
        "attachment.create", "attachment.delete", "token.create", "application.deploy", "user.update",
        "user.create",
    ):  # fmt: skip
        assert action in by_action, (action, sorted(by_action))
    create = by_action["application.create"][0]
    assert (create.actor, create.actor_id, create.address) == (member.email, member.id, "127.0.0.1")
    assert create.changes["env"] == [None, {"API_KEY": audit.SECRET}]
    update = next(e for e in by_action["application.update"] if "description" in e.changes)
    assert update.changes["description"] == ["Answers questions.", "Now in French."]
    assert update.changes["config"][0]["max_concurrency"] == 2 and update.changes["config"][1]["max_concurrency"] == 3
    assert update.changes["env.API_KEY"] == ["changed", "changed"]
    limits = next(e for e in by_action["application.update"] if "limit_daily_tokens" in e.changes)
    assert limits.changes["limit_daily_tokens"] == [None, 100000]
    revoke = next(e for e in by_action["key.update"] if "revoked_at" in e.changes)
    assert revoke.object_name == "support-bot · laptop" and revoke.changes["revoked_at"][0] is None
    assert by_action["plugin.create"][0].changes["config"] == [None, audit.SECRET]
    deploy = by_action["application.deploy"][0]
    assert deploy.actor == f"token ci ({member.email})" and deploy.owner_id == member.id
    person = [e for e in by_action["user.update"] if e.actor == admin.email]
    assert {"limit_rpm", "password_hash"} <= {field for e in person for field in e.changes}
    assert next(e for e in person if "password_hash" in e.changes).changes["password_hash"] == ["changed", "changed"]
    cli = by_action["user.create"][-1]
    assert cli.actor == "operator (command line)" and cli.address == "local" and cli.actor_id is None
    assert any(e.actor == "operator (command line)" for e in by_action["key.create"])

    # No secret's value, and no key, token or password hash, in any entry.
    dumped = json.dumps([audit.as_dict(entry) for entry in found])
    for secret in (*SECRETS, "another-secret-value", plain_token, "pbkdf2:", "scrypt:", "gAAAA"):
        assert secret not in dumped, secret

    # The CLI and the API list them; a member sees the entries about their own things only.
    listed = json.loads(runner.invoke(args=["audit", "list", "--json", "--action", "application."]).output)
    assert listed and all(entry["action"].startswith("application.") for entry in listed)
    other = factory.user("other@example.org")
    auth.logout()
    auth.login(other)
    client.post("/plugins/new", data=plugin_form("system_prompt", name="theirs"))
    theirs = client.get("/api/v1/audit", headers=bearer(token_for(app, other))).get_json()["items"]
    assert {entry["object_name"] for entry in theirs} == {"theirs"}
    page = client.get("/audit").text
    assert "support-bot" not in page and "theirs" in page
    mine = client.get("/api/v1/audit", headers=bearer(token_for(app, member))).get_json()["items"]
    assert {"application.create", "application.deploy", "user.update"} <= {entry["action"] for entry in mine}
    admins = client.get("/api/v1/audit?limit=1000", headers=bearer(token_for(app, admin))).get_json()["items"]
    assert len(admins) >= len(found)


def test_work_no_person_asked_for_writes_nothing(app, member, factory):
    application = factory.application(member, factory.model())
    with app.app_context():  # as a job runs: no request, no command
        lifecycle.transition(application.id, "deploy")
        db.session.get(Application, application.id).description = "changed by a job"
        db.session.commit()
    assert actions(app) == []


def test_entries_are_kept_until_the_retention_setting_says(app, member, factory):
    from datetime import timedelta

    from llmapp.models import utcnow

    with app.app_context():
        db.session.add_all(
            [
                AuditEntry(actor="a", action="user.update", object_type="user", at=utcnow() - timedelta(days=40)),
                AuditEntry(actor="a", action="user.update", object_type="user", at=utcnow() - timedelta(days=10)),
            ]
        )
        db.session.commit()
        assert audit.prune() == 0  # 0: kept for ever
        app.config["AUDIT_RETENTION_DAYS"] = 30
        assert audit.prune() == 1
        assert db.session.scalar(db.select(db.func.count()).select_from(AuditEntry)) == 1


def test_a_plugin_whose_type_changes_never_shows_its_old_secret(app, client, auth, member):
    auth.login(member)
    webhook = plugin_form(
        "webhook_audit", name="hook", **{"config-url": "https://audit.example/hook", "config-secret": SECRETS[1]}
    )
    assert client.post("/plugins/new", data=webhook).status_code == 303
    plugin = stored_plugin(app, "hook")
    from flask import g

    from llmapp.models import Plugin

    with app.test_request_context():  # as an edit that changed the type would store it
        g.audit_actor = audit.Actor(member.id, member.email, "127.0.0.1")
        row = db.session.get(Plugin, plugin.id)
        row.type, row.config = "system_prompt", {"prompt": "Be brief."}
        db.session.commit()
    change = [e for e in entries(app) if e.action == "plugin.update"][-1]
    assert change.changes["config"] == ["changed", "changed"]
    assert "gAAAA" not in json.dumps(change.changes) and "audit.example" not in json.dumps(change.changes)


def test_a_negative_retention_is_refused_at_start_up(tmp_path):
    import pytest

    from llmapp import config

    with pytest.raises(RuntimeError, match="LLMAPP_AUDIT_RETENTION_DAYS"):
        config.load(str(tmp_path), {"AUDIT_RETENTION_DAYS": -1, "SECRET_KEY": "x"})
