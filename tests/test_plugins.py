"""The Plugins tab: create, edit, enable/disable and delete plugins, with configuration forms generated
from each type's schema, errors at the field, secrets kept encrypted, sharing, and refusals that name
the applications concerned."""

import re

from conftest import HX
from llmapp.extensions import db
from llmapp.models import ApplicationPlugin, Plugin


def plugin_form(type_name="content_filter", **fields):
    data = {"name": "no-secrets", "type": type_name, "description": "", "version": "1.0", "enabled": "y"}
    data.update(fields)
    return data


def stored(app, name):
    with app.app_context():
        return db.session.scalar(db.select(Plugin).filter_by(name=name))


def test_the_form_follows_the_types_schema(logged_in):
    page = logged_in.get("/plugins/new?type=pii_redaction").text
    for expected in ('name="config-entities" value="phone"', 'name="config-region"', 'name="config-mask_style"'):
        assert expected in page
    fields = logged_in.get("/plugins/config-fields?type=webhook_audit", headers=HX).text
    assert 'type="password" name="config-secret"' in fields and 'name="config-include_content"' in fields
    assert 'name="config-retries"' in fields and 'step="1"' in fields
    assert logged_in.get("/plugins/config-fields?type=nope", headers=HX).status_code == 404


def test_create_with_errors_at_the_field_then_edit_and_list(logged_in, app):
    bad = plugin_form(**{"config-patterns": "(unclosed\nok", "config-max_match_chars": "0", "config-action": "explode"})
    refused = logged_in.post("/plugins/new", data=bad, headers=HX)
    assert refused.status_code == 422
    assert "is not a valid regular expression" in refused.text and "At least 1." in refused.text
    assert "Choose one of: block, mask." in refused.text
    assert "(unclosed\nok" in refused.text  # what was typed stays
    assert stored(app, "no-secrets") is None

    good = plugin_form(**{"config-keywords": "password\nsecret", "config-action": "mask", "config-apply_to": "output"})
    assert logged_in.post("/plugins/new", data=good).status_code == 303
    plugin = stored(app, "no-secrets")
    assert plugin.type == "content_filter" and plugin.config["keywords"] == ["password", "secret"]
    assert plugin.config["action"] == "mask" and plugin.config["max_match_chars"] == 100  # default kept
    listing = logged_in.get("/plugins/").text
    assert "Plugin “no-secrets” created." in listing and "Content filter" in listing
    edit = logged_in.get(f"/plugins/{plugin.id}/edit").text
    assert "password\nsecret</textarea>" in edit
    taken = logged_in.post("/plugins/new", data=good, headers=HX)
    assert taken.status_code == 422 and "You already have a plugin named “no-secrets”." in taken.text
    # Search and filters.
    assert "no-secrets" in logged_in.get("/plugins/?type=content_filter", headers=HX).text
    assert "no-secrets" not in logged_in.get("/plugins/?type=pii_redaction", headers=HX).text
    assert "no-secrets" not in logged_in.get("/plugins/?enabled=no", headers=HX).text
    assert "No plugin matches." in logged_in.get("/plugins/?q=zzz", headers=HX).text


def test_a_webhook_secret_is_stored_encrypted_and_never_shown(logged_in, app):
    from llmapp import secrets_box

    data = plugin_form(
        "webhook_audit",
        name="audit",
        **{"config-url": "https://audit.example/hook", "config-secret": "s3cret-signing-key!"},
    )
    assert logged_in.post("/plugins/new", data=data).status_code == 303
    plugin = stored(app, "audit")
    with app.app_context():
        assert secrets_box.decrypt(plugin.config["secret"]) == "s3cret-signing-key!"
    edit = logged_in.get(f"/plugins/{plugin.id}/edit").text
    assert "s3cret-signing-key!" not in edit and "stored; type to replace" in edit
    # Saved again with the secret left empty: kept.
    data.pop("config-secret")
    data["config-retries"] = "5"
    assert logged_in.post(f"/plugins/{plugin.id}/edit", data=data).status_code == 303
    with app.app_context():
        again = db.session.get(Plugin, plugin.id)
        assert again.config["retries"] == 5 and secrets_box.decrypt(again.config["secret"]) == "s3cret-signing-key!"
    short = logged_in.post(f"/plugins/{plugin.id}/edit", data={**data, "config-secret": "short"}, headers=HX)
    assert (
        short.status_code == 422
        and "At least 16 characters." in short.text
        and "short" not in re.findall(r'value="([^"]*)"', short.text)
    )


def test_sharing_members_see_their_own_and_published_ones(client, auth, app, factory):
    alice, bob, admin = (
        factory.user("alice@example.com"),
        factory.user("bob@example.com"),
        factory.user("root@example.com", admin=True),
    )
    for owner, name, published in (
        (alice, "alices", False),
        (admin, "house-rules", True),
        (admin, "admins-draft", False),
    ):
        with app.app_context():
            db.session.add(
                Plugin(name=name, type="system_prompt", config={}, created_by_id=owner.id, published=published)
            )
            db.session.commit()
    ids = {name: stored(app, name).id for name in ("alices", "house-rules", "admins-draft")}

    auth.login(bob)
    listing = client.get("/plugins/").text
    assert "house-rules" in listing and "alices" not in listing and "admins-draft" not in listing
    assert "published by an admin" in listing
    for url in (f"/plugins/{ids['alices']}/edit", f"/plugins/{ids['admins-draft']}/edit"):
        assert client.get(url).status_code == 404
    assert client.post(f"/plugins/{ids['alices']}/delete").status_code == 404
    # A published plugin can be seen (to attach it) but not changed by a member.
    assert client.get(f"/plugins/{ids['house-rules']}/edit").status_code == 403
    assert client.post(f"/plugins/{ids['house-rules']}/delete").status_code == 403
    assert client.post(f"/plugins/{ids['house-rules']}/enabled", data={"enabled": "0"}).status_code == 403
    assert stored(app, "house-rules").enabled
    # A member can't publish: the field is ignored.
    client.post("/plugins/new", data=plugin_form("system_prompt", name="bobs", published="y"))
    assert stored(app, "bobs").published is False

    auth.logout()
    auth.login(admin)
    assert all(name in client.get("/plugins/").text for name in ("alices", "house-rules", "admins-draft", "bobs"))


def test_disabling_or_deleting_a_plugin_in_use_is_refused_with_the_applications_named(logged_in, app, factory, member):
    logged_in.post("/plugins/new", data=plugin_form("system_prompt", name="greeter"))
    plugin = stored(app, "greeter")
    running = factory.application(member, factory.model(), name="front-desk", status="running")
    stopped = factory.application(member, factory.model(), name="archive")
    with app.app_context():
        for application in (running, stopped):
            db.session.add(ApplicationPlugin(application_id=application.id, plugin_id=plugin.id))
        db.session.commit()

    logged_in.post(f"/plugins/{plugin.id}/enabled", data={"enabled": "0"})
    assert (
        "“greeter” can&#39;t be disabled while “front-desk” uses it: stop it first." in logged_in.get("/plugins/").text
    )
    assert stored(app, "greeter").enabled
    logged_in.post(f"/plugins/{plugin.id}/delete")
    assert "can&#39;t be deleted while “front-desk” uses it" in logged_in.get("/plugins/").text

    with app.app_context():
        from llmapp.models import Application

        db.session.get(Application, running.id).status = "stopped"
        db.session.commit()
    logged_in.post(f"/plugins/{plugin.id}/enabled", data={"enabled": "0"})
    assert stored(app, "greeter").enabled is False
    logged_in.post(f"/plugins/{plugin.id}/delete")
    assert "is attached to “archive”, “front-desk”: detach it there first" in logged_in.get("/plugins/").text
    assert stored(app, "greeter") is not None
