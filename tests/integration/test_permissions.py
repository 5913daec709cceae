"""Who may do what is the services' rule (Forbidden, 403), answered the same by every adapter: the pages
show the 403 page with the service's message, the API a 403 problem document, the CLI exits 1 with it.
What a member may not even see stays a 404 (NotFound): another member's plugin looks like a missing one."""

import io

import click
import pytest

from conftest import API, HX, bearer, problem, token_for
from llmapp.extensions import db
from llmapp.models import Plugin, PluginDocument, RegistryModel, User
from llmapp.services import OPERATOR, Forbidden, NotFound, plugin_documents, plugins, registry, users

REGISTRY_ONLY = "Only an admin can change the model registry."
USERS_ONLY = "Only an admin can manage users."
NOT_YOURS = "Only its owner or an admin can change this plugin."


def refused_page(response, message: str) -> None:
    assert response.status_code == 403, response.text
    assert message in response.text


def admins_plugins(app, admin) -> tuple[int, int, int]:
    """An admin's published knowledge-retrieval plugin with a document, and an unpublished one."""
    with app.app_context():
        published = Plugin(name="house", type="knowledge_retrieval", config={}, created_by_id=admin.id, published=True)
        draft = Plugin(name="draft", type="system_prompt", config={}, created_by_id=admin.id, published=False)
        db.session.add_all([published, draft])
        db.session.flush()
        document = PluginDocument(plugin=published, name="faq.md", text="Hours: 9 to 5.", size=14)
        db.session.add(document)
        db.session.commit()
        return published.id, document.id, draft.id


def test_a_member_changing_the_registry_gets_403_from_the_pages_and_the_api(app, client, auth, member, factory):
    model = factory.model(name="kept")
    form = {"name": "x", "engine": "transformers", "source": "/models/x"}
    auth.login(member)
    for method, url in (
        ("get", "/models/new"),
        ("post", "/models/new"),
        ("get", f"/models/{model.id}/edit"),
        ("post", f"/models/{model.id}/edit"),
        ("post", f"/models/{model.id}/delete"),
        ("post", "/models/detect"),
    ):
        refused_page(getattr(client, method)(url, data=form if method == "post" else None), REGISTRY_ONLY)
    token = bearer(token_for(app, member))
    body = {"name": "x", "parameters_billions": 1, "precision": "fp32", "context_length": 8, "engine": "transformers",
            "source": "/models/x"}  # fmt: skip
    for method, url, json in (
        ("post", f"{API}/models", body),
        ("put", f"{API}/models/{model.id}", body),
        ("delete", f"{API}/models/{model.id}", None),
        ("put", f"{API}/models/999999", body),  # refused before it is looked up, as before
    ):
        assert problem(getattr(client, method)(url, json=json, headers=token), 403)["detail"] == REGISTRY_ONLY
    with app.app_context():
        assert [m.name for m in db.session.scalars(db.select(RegistryModel))] == ["kept"]
    # (The CLI has no registry commands.)


def test_a_member_managing_users_gets_403_from_the_pages_and_the_api(app, client, auth, member, admin):
    auth.login(member)
    for method, url in (
        ("get", "/users/"),
        ("post", "/users/"),
        ("post", f"/users/{admin.id}/admin"),
        ("post", f"/users/{admin.id}/disable"),
        ("post", f"/users/{admin.id}/enable"),
        ("post", f"/users/{admin.id}/reset-password"),
    ):
        data = {"email": "new@example.com", "password": "long enough"} if method == "post" else None
        refused_page(getattr(client, method)(url, data=data), USERS_ONLY)
        refused_page(getattr(client, method)(url, headers=HX), USERS_ONLY)  # htmx gets the same answer
    assert client.get("/users/account").status_code == 200  # their own account stays theirs
    token = bearer(token_for(app, member))
    for method, url, json in (
        ("get", f"{API}/users", None),
        ("post", f"{API}/users", {"email": "new@example.com", "password": "long enough"}),
        ("put", f"{API}/users/{admin.id}", {"admin": False}),
        ("put", f"{API}/users/{admin.id}", {"disabled": True}),
        ("post", f"{API}/users/{admin.id}/reset-password", None),
        ("put", f"{API}/users/999999", {"admin": True}),  # not even whether a user exists
    ):
        assert problem(getattr(client, method)(url, json=json, headers=token), 403)["detail"] == USERS_ONLY
    with app.app_context():
        stored = db.session.get(User, admin.id)
        assert stored.is_admin and stored.disabled_at is None and stored.check_password("password123")
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == 2


def test_a_member_changing_an_admins_published_plugin_gets_403_and_an_unpublished_one_404(
    app, client, auth, member, admin
):
    published, document, draft = admins_plugins(app, admin)
    auth.login(member)
    for method, url, data in (
        ("get", f"/plugins/{published}/edit", None),
        ("post", f"/plugins/{published}/edit", {"name": "mine now", "type": "knowledge_retrieval"}),
        ("post", f"/plugins/{published}/enabled", {"enabled": "0"}),
        ("post", f"/plugins/{published}/delete", None),
        ("post", f"/plugins/{published}/documents", {"document": (io.BytesIO(b"new text"), "new.md")}),
        ("post", f"/plugins/{published}/documents/{document}/delete", None),
    ):
        refused_page(getattr(client, method)(url, data=data), NOT_YOURS)
    assert client.get(f"/plugins/{draft}/edit").status_code == 404  # unseen: as if it did not exist
    assert client.post(f"/plugins/{draft}/delete").status_code == 404
    token = bearer(token_for(app, member))
    for method, url, json in (
        ("put", f"{API}/plugins/{published}", {"name": "mine now", "type": "knowledge_retrieval"}),
        ("delete", f"{API}/plugins/{published}", None),
        ("post", f"{API}/plugins/{published}/documents", {"name": "new.md", "text": "new text"}),
        ("delete", f"{API}/plugins/{published}/documents/{document}", None),
    ):
        assert problem(getattr(client, method)(url, json=json, headers=token), 403)["detail"] == NOT_YOURS
    assert problem(client.delete(f"{API}/plugins/{draft}", headers=token), 404)["detail"] == "No such plugin."
    with app.app_context():
        plugin = db.session.get(Plugin, published)
        assert plugin.name == "house" and plugin.enabled and [d.name for d in plugin.documents] == ["faq.md"]
        assert db.session.get(Plugin, draft) is not None


def test_the_registry_service_refuses_a_member(app, member, admin, factory):
    model = factory.model(name="kept")
    with app.app_context():
        acting = db.session.get(User, member.id)
        for change in (
            lambda: registry.create_model({"name": "x"}, acting=acting),
            lambda: registry.update_model(model.id, {"name": "x"}, acting=acting),
            lambda: registry.delete_model(model.id, acting=acting),
            lambda: registry.detect("/", acting=acting),
        ):
            with pytest.raises(Forbidden, match=REGISTRY_ONLY):
                change()
        registry.delete_model(model.id, acting=db.session.get(User, admin.id))  # an admin may
        assert registry.list_models() == []


def test_the_users_service_refuses_a_member_and_lets_the_operator_through(app, member, admin):
    with app.app_context():
        acting, other = db.session.get(User, member.id), db.session.get(User, admin.id)
        for change in (
            lambda: users.list_users(acting=acting),
            lambda: users.create_user("new@example.com", "long enough", acting=acting),
            lambda: users.get_user(other.id, acting=acting),
            lambda: users.set_admin(other, False, acting=acting),
            lambda: users.disable(other, acting=acting),
            lambda: users.enable(other, acting=acting),
            lambda: users.reset_password(other, acting=acting),
        ):
            with pytest.raises(Forbidden, match=USERS_ONLY):
                change()
        assert other.is_admin and other.disabled_at is None and other.check_password("password123")
        # The CLI acts as the operator: the admin rule lets it through, the other rules still apply.
        users.create_user("new@example.com", "long enough", acting=OPERATOR)
        assert [u.email for u, _ in users.list_users(acting=OPERATOR)] == [
            "admin@example.com", "member@example.com", "new@example.com"
        ]  # fmt: skip
        users.disable(acting, acting=OPERATOR)
        assert acting.disabled_at is not None


def test_the_plugins_service_refuses_a_member_what_they_see_but_do_not_own(app, member, admin):
    published_id, document_id, draft_id = admins_plugins(app, admin)
    with app.app_context():
        acting = db.session.get(User, member.id)
        published = plugins.get_for_user(published_id, acting)  # seen, to attach it
        for change in (
            lambda: plugins.get_changeable(published_id, acting),
            lambda: plugins.update(published, acting, {"name": "mine now", "type": "knowledge_retrieval"}),
            lambda: plugins.set_enabled(published, acting, False),
            lambda: plugins.delete(published, acting),
            lambda: plugin_documents.add_document(published, acting, "new.md", b"new text"),
            lambda: plugin_documents.delete_document(published, acting, document_id),
        ):
            with pytest.raises(Forbidden, match=NOT_YOURS):
                change()
        with pytest.raises(NotFound, match="No such plugin."):
            plugins.get_changeable(draft_id, acting)
        assert published.name == "house" and published.enabled and len(published.documents) == 1
        owner = db.session.get(User, admin.id)
        assert plugins.get_changeable(published_id, owner) is published


def test_the_cli_ends_a_refused_command_with_the_services_message(app, runner):
    from llmapp.cli import ServiceCommands

    probe = ServiceCommands("probe")

    @probe.command("refused")
    def refused():
        raise Forbidden(USERS_ONLY)

    @probe.command("handled")
    def handled():
        click.echo("done")

    app.cli.add_command(probe)
    result = runner.invoke(args=["probe", "refused"])
    assert result.exit_code == 1 and f"Error: {USERS_ONLY}" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(args=["probe", "handled"]).output == "done\n"


def test_nobody_acting_is_refused_and_only_the_operator_passes_as_admin():
    """The operator is a sentinel of its own: a missing user (None) never passes an admin-only rule."""
    from llmapp.services import require_admin

    with pytest.raises(Forbidden, match="admins only"):
        require_admin(None, "admins only")
    require_admin(OPERATOR, "admins only")
