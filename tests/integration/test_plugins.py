"""The Plugins tab: create, edit, enable/disable and delete plugins, with configuration forms generated
from each type's schema, errors at the field, secrets kept encrypted, sharing, and refusals that name
the applications concerned."""

import re

from conftest import HX, plugin_form, stored_plugin
from llmapp.extensions import db
from llmapp.models import ApplicationPlugin, Plugin


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
    assert stored_plugin(app, "no-secrets") is None

    good = plugin_form(**{"config-keywords": "password\nsecret", "config-action": "mask", "config-apply_to": "output"})
    assert logged_in.post("/plugins/new", data=good).status_code == 303
    plugin = stored_plugin(app, "no-secrets")
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
    plugin = stored_plugin(app, "audit")
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
    ids = {name: stored_plugin(app, name).id for name in ("alices", "house-rules", "admins-draft")}

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
    assert stored_plugin(app, "house-rules").enabled
    # A member can't publish: the field is ignored.
    client.post("/plugins/new", data=plugin_form("system_prompt", name="bobs", published="y"))
    assert stored_plugin(app, "bobs").published is False

    auth.logout()
    auth.login(admin)
    assert all(name in client.get("/plugins/").text for name in ("alices", "house-rules", "admins-draft", "bobs"))


def test_disabling_or_deleting_a_plugin_in_use_is_refused_with_the_applications_named(logged_in, app, factory, member):
    logged_in.post("/plugins/new", data=plugin_form("system_prompt", name="greeter"))
    plugin = stored_plugin(app, "greeter")
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
    assert stored_plugin(app, "greeter").enabled
    logged_in.post(f"/plugins/{plugin.id}/delete")
    assert "can&#39;t be deleted while “front-desk” uses it" in logged_in.get("/plugins/").text

    with app.app_context():
        from llmapp.models import Application

        db.session.get(Application, running.id).status = "stopped"
        db.session.commit()
    logged_in.post(f"/plugins/{plugin.id}/enabled", data={"enabled": "0"})
    assert stored_plugin(app, "greeter").enabled is False
    logged_in.post(f"/plugins/{plugin.id}/delete")
    assert "is attached to “archive”, “front-desk”: detach it there first" in logged_in.get("/plugins/").text
    assert stored_plugin(app, "greeter") is not None


# --- attaching plugins to an application ------------------------------------------------------------


def chain_names(app, application):
    from llmapp.models import Application
    from llmapp.services import plugins

    with app.app_context():
        return [(link.plugin.name, link.enabled) for link in plugins.chain(db.session.get(Application, application.id))]


def document_of(app, application):
    from llmapp.models import Application
    from llmapp.services import plugins

    with app.app_context():
        return plugins.chain_document(db.session.get(Application, application.id))


def test_attach_order_override_turn_off_and_detach_on_the_detail_page(logged_in, app, factory, member):
    logged_in.post("/plugins/new", data=plugin_form("system_prompt", name="house style"))
    logged_in.post("/plugins/new", data=plugin_form("pii_redaction", name="pii"))
    style, pii = stored_plugin(app, "house style"), stored_plugin(app, "pii")
    application = factory.application(member, factory.model(), name="front-desk")
    base = f"/applications/{application.id}/plugins"
    page = logged_in.get(f"/applications/{application.id}").text
    assert 'id="attach-plugin"' in page and "house style — System prompt / template" in page

    for plugin in (style, pii):
        section = logged_in.post(base, data={"plugin_id": plugin.id}, headers=HX)
        assert section.status_code == 200 and 'id="plugins"' in section.text
    assert chain_names(app, application) == [("house style", True), ("pii", True)]
    assert 'id="attach-plugin"' not in section.text  # nothing left to attach
    again = logged_in.post(base, data={"plugin_id": pii.id}, headers=HX)
    assert "is attached already" in again.text

    logged_in.post(f"{base}/{pii.id}/move", data={"direction": "up"}, headers=HX)
    assert chain_names(app, application) == [("pii", True), ("house style", True)]
    logged_in.post(f"{base}/{pii.id}/move", data={"direction": "up"}, headers=HX)  # at the top: stays
    assert [p["name"] for p in document_of(app, application)["plugins"]] == ["pii", "house style"]

    # Overrides: the form shows the plugin's values; errors at the field, nothing saved.
    form = logged_in.get(f"{base}?edit={pii.id}", headers=HX).text
    assert 'id="config-region" value="CN"' in form and "Save overrides" in form
    bad = logged_in.post(
        f"{base}/{pii.id}/overrides", data={"config-region": "CHINA", "config-mask_style": "partial"}, headers=HX
    )
    assert bad.status_code == 422 and "A two-letter region code, e.g. CN." in bad.text
    assert 'value="CHINA"' in bad.text  # what was typed stays
    assert document_of(app, application)["plugins"][0]["config"]["region"] == "CN"
    ok = logged_in.post(
        f"{base}/{pii.id}/overrides",
        data={
            "config-region": "US",
            "config-mask_style": "partial",
            "config-apply_to": "both",
            "config-entities": ["email"],
        },
        headers=HX,
    )
    assert ok.status_code == 200 and "3 settings overridden here" in ok.text
    effective = document_of(app, application)["plugins"][0]["config"]
    assert (effective["region"], effective["mask_style"], effective["entities"]) == ("US", "partial", ["email"])
    version = document_of(app, application)["version"]
    logged_in.post(f"{base}/{pii.id}/overrides", data={"reset": "1"}, headers=HX)
    assert document_of(app, application)["plugins"][0]["config"]["region"] == "CN"
    assert document_of(app, application)["version"] != version  # a changed chain is a new version

    # Off for this application: still attached, no longer in what the server runs.
    logged_in.post(f"{base}/{style.id}/enabled", data={"enabled": "0"}, headers=HX)
    assert chain_names(app, application) == [("pii", True), ("house style", False)]
    assert [p["name"] for p in document_of(app, application)["plugins"]] == ["pii"]
    logged_in.post(f"{base}/{pii.id}/detach", headers=HX)
    assert chain_names(app, application) == [("house style", False)]
    # Without htmx, a plain form post comes back to the detail page.
    plain = logged_in.post(base, data={"plugin_id": pii.id})
    assert plain.status_code == 303 and plain.headers["Location"].endswith(f"/applications/{application.id}#plugins")


def test_a_member_attaches_only_what_they_may_see_to_what_is_theirs(client, auth, app, factory):
    alice, bob = factory.user("alice@example.com"), factory.user("bob@example.com")
    with app.app_context():
        db.session.add(Plugin(name="alices", type="system_prompt", config={}, created_by_id=alice.id))
        db.session.commit()
    alices = stored_plugin(app, "alices")
    bobs_app = factory.application(bob, factory.model(), name="bobs-app")
    alices_app = factory.application(alice, factory.model(), name="alices-app")
    auth.login(bob)
    refused = client.post(f"/applications/{bobs_app.id}/plugins", data={"plugin_id": alices.id}, headers=HX)
    assert "No such plugin, or you can&#39;t use it." in refused.text and chain_names(app, bobs_app) == []
    assert "alices" not in client.get(f"/applications/{bobs_app.id}").text
    assert client.post(f"/applications/{alices_app.id}/plugins", data={"plugin_id": alices.id}).status_code == 404
    assert client.get(f"/applications/{alices_app.id}/plugins").status_code == 404
    assert chain_names(app, alices_app) == []


def document_names(app, plugin_name):
    with app.app_context():
        return [d.name for d in db.session.scalar(db.select(Plugin).filter_by(name=plugin_name)).documents]


def test_documents_of_a_retrieval_plugin(logged_in, app):
    import io

    logged_in.post("/plugins/new", data=plugin_form("knowledge_retrieval", name="handbook"))
    plugin = stored_plugin(app, "handbook")
    url = f"/plugins/{plugin.id}/documents"
    assert "No documents yet" in logged_in.get(f"/plugins/{plugin.id}/edit").text

    def upload(name, data):
        return logged_in.post(
            url, data={"document": (io.BytesIO(data), name)}, headers=HX, content_type="multipart/form-data"
        )

    added = upload("leave.md", b"# Leave\n\n25 days a year.\n")
    assert added.status_code == 200 and "leave.md" in added.text
    for name, data, words in (
        ("photo.png", b"\x89PNG", "Upload a text or Markdown file"),
        ("latin1.txt", "café".encode("latin-1"), "is not UTF-8 text"),
        ("empty.txt", b"  \n", "is empty"),
        ("big.txt", b"x" * (1024 * 1024 + 1), "larger than 1 MiB"),
        ("leave.md", b"again", "already has a document named"),
    ):
        refused = upload(name, data)
        assert refused.status_code == 422 and words in refused.text, name
    assert document_names(app, "handbook") == ["leave.md"]
    pii = logged_in.post("/plugins/new", data=plugin_form("pii_redaction", name="pii"))
    assert pii.status_code == 303
    other = logged_in.post(
        f"/plugins/{stored_plugin(app, 'pii').id}/documents",
        data={"document": (io.BytesIO(b"x"), "a.txt")},
        headers=HX,
        content_type="multipart/form-data",
    )
    assert "Only a knowledge-retrieval plugin has documents." in other.text
    with app.app_context():
        document_id = db.session.scalar(db.select(Plugin).filter_by(name="handbook")).documents[0].id
    assert "No documents yet" in logged_in.post(f"{url}/{document_id}/delete", headers=HX).text


# --- a running application takes chain changes live ---------------------------------------------------


def test_the_application_form_chooses_plugins(logged_in, app, factory, member):
    from test_applications import form_data

    for name in ("first", "second"):
        logged_in.post("/plugins/new", data=plugin_form("system_prompt", name=name))
    first, second = stored_plugin(app, "first"), stored_plugin(app, "second")
    model = factory.model()
    page = logged_in.get("/applications/new").text
    assert "first — System prompt / template" in page and 'name="plugins"' in page
    stranger = factory.user("stranger@example.com")
    with app.app_context():
        db.session.add(Plugin(name="strangers", type="system_prompt", config={}, created_by_id=stranger.id))
        db.session.commit()
    refused = logged_in.post(
        "/applications/new", data=form_data(model, plugins=[str(stored_plugin(app, "strangers").id)]), headers=HX
    )
    assert refused.status_code == 422 and "Choose plugins from the list." in refused.text
    created = logged_in.post("/applications/new", data=form_data(model, plugins=[str(second.id), str(first.id)]))
    assert created.status_code == 303
    from llmapp.models import Application

    with app.app_context():
        application = db.session.scalar(db.select(Application).filter_by(name="support-bot"))
    assert chain_names(app, application) == [("second", True), ("first", True)]  # in the order given
    edit = logged_in.get(f"/applications/{application.id}/edit").text
    assert edit.count("checked") >= 2
    logged_in.post(f"/applications/{application.id}/edit", data=form_data(model, plugins=[str(first.id)]))
    assert chain_names(app, application) == [("first", True)]
