import re
from datetime import datetime

import pytest
from sqlalchemy import event

from llmapp.extensions import db
from llmapp.models import Application, EnvVar

HX = {"HX-Request": "true"}


def form_data(model, **overrides):
    data = {
        "name": "support-bot",
        "model_id": str(model.id),
        "description": "Answers questions.",
        "max_concurrency": "2",
        "timeout_s": "60",
        "log_level": "INFO",
        "cache_size": "64",
        "batch_size": "2",
        "restart_policy": "on-failure",
        "max_restarts": "3",
    }
    data.update(overrides)
    return data


def stored(app, **filters):
    with app.app_context():
        return db.session.scalars(db.select(Application).filter_by(**filters)).all()


# --- list -------------------------------------------------------------------------------------


def test_list_full_page_and_htmx_fragment(logged_in, factory, member):
    model = factory.model(name="Qwen-0.5B")
    factory.application(member, model, name="support-bot")
    page = logged_in.get("/applications/")
    assert page.status_code == 200
    assert "<html" in page.text and "App Center" in page.text and 'role="tab"' in page.text
    assert "support-bot" in page.text and "Qwen-0.5B" in page.text and "member@example.com" in page.text
    fragment = logged_in.get("/applications/", headers=HX)
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and fragment.text.lstrip().startswith('<div id="app-table"')
    assert "support-bot" in fragment.text
    assert "HX-Request" in fragment.headers["Vary"]


def test_history_restore_and_boosted_requests_get_the_full_page(logged_in):
    for headers in ({**HX, "HX-History-Restore-Request": "true"}, {**HX, "HX-Boosted": "true"}):
        assert "<html" in logged_in.get("/applications/", headers=headers).text


def test_search_and_status_filter(logged_in, factory, member):
    model = factory.model()
    factory.application(member, model, name="support-bot")
    factory.application(member, model, name="code-review", status="failed")
    factory.application(member, model, name="100%_literal")
    text = logged_in.get("/applications/?q=SUPPORT", headers=HX).text
    assert "support-bot" in text and "code-review" not in text
    text = logged_in.get("/applications/?status=failed", headers=HX).text
    assert "code-review" in text and "support-bot" not in text
    text = logged_in.get("/applications/?q=%25_", headers=HX).text  # % and _ are literal, not wildcards
    assert "100%_literal" in text and "support-bot" not in text
    assert "No application matches" in logged_in.get("/applications/?q=nothing-like-it", headers=HX).text


def test_pagination(logged_in, factory, member, app):
    model = factory.model()
    for i in range(30):
        factory.application(member, model, name=f"app-{i:02d}")
    first = logged_in.get("/applications/", headers=HX).text
    second = logged_in.get("/applications/?page=2", headers=HX).text
    names = lambda html: set(re.findall(r">(app-\d\d)</a>", html))  # noqa: E731
    assert len(names(first)) == 25 and len(names(second)) == 5
    assert not names(first) & names(second)
    assert "page 1 of 2" in first and "Next →" in first
    # Past the end (an old link): the last page, never "No applications yet" above "page 99 of 2".
    beyond = logged_in.get("/applications/?page=99", headers=HX)
    assert beyond.status_code == 200 and names(beyond.text) == names(second)
    assert "page 2 of 2" in beyond.text and "No applications yet" not in beyond.text


def test_list_query_count_does_not_grow_with_rows(logged_in, factory, member, app):
    """Owner and model are loaded with the page (no N+1)."""
    model = factory.model()

    def count_queries():
        statements = []
        with app.app_context():
            listener = lambda *args: statements.append(args[2])  # noqa: E731
            event.listen(db.engine, "before_cursor_execute", listener)
            try:
                assert logged_in.get("/applications/", headers=HX).status_code == 200
            finally:
                event.remove(db.engine, "before_cursor_execute", listener)
        return len(statements)

    factory.application(member, model)
    one = count_queries()
    for _ in range(20):
        factory.application(factory.user(), factory.model())  # other owners and models: admin view below
        factory.application(member, model)
    assert count_queries() == one


def test_row_actions_follow_the_status(logged_in, factory, member):
    model = factory.model()
    running = factory.application(member, model, name="live-one", status="running")
    stopped = factory.application(member, model, name="idle-one")
    text = logged_in.get("/applications/", headers=HX).text
    running_row = re.search(rf'<tr id="app-{running.id}">.*?</tr>', text, re.S).group(0)
    stopped_row = re.search(rf'<tr id="app-{stopped.id}">.*?</tr>', text, re.S).group(0)
    assert f'hx-delete="/applications/{stopped.id}/delete"' in stopped_row
    assert f"/applications/{stopped.id}/edit" in stopped_row
    assert "hx-delete" not in running_row and f"/applications/{running.id}/edit" in running_row  # a draft release
    assert 'disabled title="Stop the application before deleting it"' in running_row


# --- create -----------------------------------------------------------------------------------


def test_create_page(logged_in, factory):
    factory.model(name="Qwen-0.5B")
    page = logged_in.get("/applications/new")
    assert page.status_code == 200
    assert "Create application" in page.text and "Qwen-0.5B" in page.text
    assert 'id="recommendation"' in page.text and "Recommended for this model" in page.text


def test_create_succeeds_flashes_and_lists(logged_in, factory, app, member):
    model = factory.model()
    response = logged_in.post(
        "/applications/new",
        data=form_data(
            model,
            **{
                "env-0-name": "LOG_FORMAT",
                "env-0-value": "json",
                "env-3-name": "API_KEY",
                "env-3-value": "sk-very-secret",
                "env-3-secret": "y",
            },
        ),
    )
    assert response.status_code == 303 and response.headers["Location"] == "/applications/"
    (application,) = stored(app, name="support-bot")
    assert application.created_by_id == member.id and application.status == "stopped"
    assert application.config == {
        "max_concurrency": 2,
        "timeout_s": 60,
        "log_level": "INFO",
        "cache_size": 64,
        "batch_size": 2,
        "restart_policy": "on-failure",
        "max_restarts": 3,
        "replicas": 1,  # left empty: one
        "log_lines": 2000,  # left empty: the platform's retention
        "log_days": 7,
        "context_size": 0,  # left empty: the model's own
        "threads": 0,
        "gpu_memory_share": 90,
        "tensor_parallel": 1,
        "host": "",  # left empty: any host that fits
    }
    page = logged_in.get("/applications/")
    assert "Application “support-bot” created." in page.text and ">support-bot</a>" in page.text


def test_create_with_htmx_answers_hx_location(logged_in, factory):
    response = logged_in.post("/applications/new", data=form_data(factory.model()), headers=HX)
    assert response.status_code == 200 and response.headers["HX-Redirect"] == "/applications/"


def test_invalid_input_rerenders_inline_and_keeps_what_was_typed(logged_in, factory, app):
    model = factory.model()
    data = form_data(
        model,
        name="x" * 101,
        max_concurrency="0",
        timeout_s="abc",
        cache_size="100001",
        batch_size="257",
        description="my description",
        **{"env-0-name": "1BAD", "env-0-value": "keep-me", "env-1-name": "OK", "env-2-name": "OK"},
    )
    response = logged_in.post("/applications/new", data=data, headers=HX)
    assert response.status_code == 422
    text = response.text
    assert text.lstrip().startswith('<form id="application-form"')  # the fragment, for htmx to swap
    assert "At most 100 characters." in text
    assert text.count("Must be between") == 3  # concurrency, cache, batch
    assert "Not a valid integer value." in text  # timeout
    assert "Use letters, digits and _, not starting with a digit." in text
    assert "OK is defined twice." in text
    assert 'value="my description"' in text or "my description</textarea>" in text
    assert 'value="keep-me"' in text and 'value="1BAD"' in text
    assert stored(app) == []


def test_required_fields(logged_in, factory, app):
    factory.model()
    response = logged_in.post("/applications/new", data={"name": "  ", "model_id": "", "log_level": "INFO"})
    assert response.status_code == 422
    assert "Name is required." in response.text and "Choose a model." in response.text
    assert "is required." not in response.text.replace("Name is required.", "")  # the rest: the recommendation
    response = logged_in.post("/applications/new", data=form_data(factory.model(), model_id="999999"))
    assert response.status_code == 422 and "Choose a model from the registry." in response.text


def test_a_name_says_what_it_may_be_and_a_long_one_is_refused_not_cut(logged_in, factory, member, app):
    model = factory.model()
    for name in ("my bot", 'bot"; rm -rf /', "-starts-with-a-dash", "_underscore"):
        refused = logged_in.post("/applications/new", data=form_data(model, name=name))
        assert refused.status_code == 422 and "Use letters, digits and - _ . : / (no spaces)" in refused.text, name
    long = logged_in.post("/applications/new", data=form_data(model, name="a" * 101))
    assert long.status_code == 422 and "At most 100 characters." in long.text
    assert 'maxlength="100"' not in logged_in.get("/applications/new").text  # the browser cuts nothing silently
    assert stored(app, name="a" * 100) == [] and stored(app, name="a" * 101) == []
    for name in ("客服-助手", "qwen2.5:7b", "team/support_bot.v2"):  # any script; the model ids' punctuation
        made = logged_in.post("/applications/new", data=form_data(model, name=name))
        assert made.status_code == 303, (name, made.text)
    # A name from before the rule is kept through an edit of something else; a new one must follow it.
    old = factory.application(member, model, name="old name")
    kept = logged_in.post(f"/applications/{old.id}/edit", data=form_data(model, name="old name", description="x"))
    assert kept.status_code == 303
    renamed = logged_in.post(f"/applications/{old.id}/edit", data=form_data(model, name="new name"))
    assert renamed.status_code == 422 and "(no spaces)" in renamed.text


def test_name_unique_per_owner_only(logged_in, factory, member, app):
    model = factory.model()
    factory.application(member, model, name="support-bot")
    response = logged_in.post("/applications/new", data=form_data(model, name="Support-Bot"))
    assert response.status_code == 422 and "You already have an application named" in response.text
    other = factory.user()
    factory.application(other, model, name="shared-name")
    assert logged_in.post("/applications/new", data=form_data(model, name="shared-name")).status_code == 303


def test_values_above_the_recommendation_save_with_a_warning(logged_in, factory, app):
    model = factory.model(parameters_billions=7, precision="bf16", context_length=4096)  # recommends 2
    response = logged_in.post("/applications/new", data=form_data(model, max_concurrency="500"), follow_redirects=True)
    assert response.status_code == 200
    assert "Max concurrency 500 is above the 2 recommended for this model." in response.text
    assert stored(app, name="support-bot")


# --- recommendation and form fragments --------------------------------------------------------


def test_recommendation_fragment_follows_the_model(logged_in, factory):
    small = factory.model(parameters_billions=0.5, precision="bf16", context_length=4096)
    big = factory.model(parameters_billions=70, precision="bf16", context_length=8192)
    small_text = logged_in.get(f"/applications/recommendation?model_id={small.id}", headers=HX).text
    big_text = logged_in.get(f"/applications/recommendation?model_id={big.id}", headers=HX).text
    assert "Recommended for this model" in small_text and "Apply" in small_text
    assert "does not fit" in big_text and "max concurrency 1," in big_text
    assert "Choose a model" in logged_in.get("/applications/recommendation?model_id=424242").text
    # The same 70B model behind an upstream: judged by what applies there, not this host's memory.
    remote = factory.model(
        parameters_billions=70, context_length=8192, engine="openai", source="", base_url="http://vllm:8000/v1"
    )
    remote_text = logged_in.get(f"/applications/recommendation?model_id={remote.id}", headers=HX).text
    assert "does not fit" not in remote_text and "Served by http://vllm:8000/v1" in remote_text
    assert "max concurrency 64, batch size 1," in remote_text


def test_a_model_this_host_cant_serve_is_flagged_when_it_is_chosen(logged_in, factory, tiny_model_dir):
    missing = factory.model(source="/models/gone")
    text = logged_in.get(f"/applications/recommendation?model_id={missing.id}", headers=HX).text
    assert "can't be deployed on this host yet" in text and "/models/gone" in text
    assert "Recommended for this model" in text  # its recommendation still shows: the directory may come
    present = factory.model(source=tiny_model_dir, parameters_billions=0.0004, precision="fp32")
    text = logged_in.get(f"/applications/recommendation?model_id={present.id}", headers=HX).text
    assert "can't be deployed" not in text and "Recommended for this model" in text
    # The form says it too, on a page load with that model chosen; unasked, it starts on the one that can.
    page = logged_in.get(f"/applications/new?model_id={missing.id}").text
    assert "can't be deployed on this host yet" in page
    page = logged_in.get("/applications/new").text
    assert re.search(rf'<option selected value="{present.id}">', page) and "can't be deployed" not in page


def test_apply_fills_the_recommended_values_and_keeps_the_log_level(logged_in, factory):
    model = factory.model(parameters_billions=7, precision="bf16", context_length=4096)
    text = logged_in.get(
        f"/applications/recommendation/apply?model_id={model.id}&log_level=DEBUG&max_concurrency=99&timeout_s=5",
        headers=HX,
    ).text
    assert text.lstrip().startswith('<div id="config-fields"')
    assert re.search(r'name="max_concurrency"[^>]*value="2"', text)
    assert re.search(r'name="timeout_s"[^>]*value="100"', text)
    assert '<option selected value="DEBUG">' in text
    # A field Apply does not fill keeps its error mark while it is still wrong; the filled ones lose theirs.
    text = logged_in.get(
        f"/applications/recommendation/apply?model_id={model.id}&max_restarts=99&batch_size=999", headers=HX
    ).text
    assert 'id="max_restarts-error">Must be between 0 and 10.' in text
    assert re.search(r'name="max_restarts"[^>]*aria-invalid="true"', text) or 'aria-invalid="true"' in text
    assert "batch_size-error" not in text


def test_env_row_fragment_and_next_add_button(logged_in):
    text = logged_in.get("/applications/env-row?index=4", headers=HX).text
    assert 'name="env-4-name"' in text and 'name="env-4-value"' in text and 'name="env-4-secret"' in text
    assert 'hx-swap-oob="true"' in text and "/applications/env-row?index=5" in text


# --- detail, secrets --------------------------------------------------------------------------


def create_with_secret(client, model):
    client.post(
        "/applications/new",
        data=form_data(
            model,
            **{
                "env-0-name": "API_KEY",
                "env-0-value": "sk-very-secret",
                "env-0-secret": "y",
                "env-1-name": "MODE",
                "env-1-value": "fast",
            },
        ),
    )


def test_secrets_are_encrypted_at_rest_and_never_shown(logged_in, factory, app):
    create_with_secret(logged_in, factory.model())
    (application,) = stored(app)
    with app.app_context():
        secret, plain = db.session.scalars(db.select(EnvVar).order_by(EnvVar.position)).all()
        assert secret.is_secret and "sk-very-secret" not in secret.value and secret.value.startswith("gAAAA")
        assert (plain.name, plain.value, plain.is_secret) == ("MODE", "fast", False)
        from llmapp import secrets_box

        assert secrets_box.decrypt(secret.value) == "sk-very-secret"
    for url in (f"/applications/{application.id}", f"/applications/{application.id}/edit", "/applications/"):
        text = logged_in.get(url).text
        assert "sk-very-secret" not in text
    detail = logged_in.get(f"/applications/{application.id}").text
    assert "API_KEY" in detail and "••••" in detail and "fast" in detail
    assert "Replace" in logged_in.get(f"/applications/{application.id}/edit").text


def test_edit_keeps_a_secret_left_empty_and_replaces_a_typed_one(logged_in, factory, app):
    create_with_secret(logged_in, factory.model())
    (application,) = stored(app)
    with app.app_context():
        secret_id = db.session.scalar(db.select(EnvVar.id).where(EnvVar.name == "API_KEY"))
    data = form_data(
        factory.model(),
        name="renamed",
        **{
            "env-0-name": "API_KEY",
            "env-0-value": "",
            "env-0-secret": "y",
            "env-0-secret_id": str(secret_id),
        },
    )
    saved = logged_in.post(f"/applications/{application.id}/edit", data=data)
    # Saving an edit lands on the application edited, not on the list.
    assert saved.status_code == 303 and saved.headers["Location"] == f"/applications/{application.id}"
    from llmapp import secrets_box

    with app.app_context():
        (var,) = db.session.scalars(db.select(EnvVar)).all()
        assert secrets_box.decrypt(var.value) == "sk-very-secret"
    data["env-0-value"] = "sk-rotated"
    logged_in.post(f"/applications/{application.id}/edit", data=data)
    with app.app_context():
        (var,) = db.session.scalars(db.select(EnvVar)).all()
        assert secrets_box.decrypt(var.value) == "sk-rotated"
        assert db.session.get(Application, application.id).name == "renamed"


def test_unticking_secret_asks_for_the_value_and_loses_nothing(logged_in, factory, app):
    create_with_secret(logged_in, factory.model())
    (application,) = stored(app)
    with app.app_context():
        secret_id = db.session.scalar(db.select(EnvVar.id).where(EnvVar.name == "API_KEY"))
    # "Secret" unticked on the stored secret, its value left empty: refused at that row, nothing changes.
    data = form_data(factory.model(), **{"env-0-name": "API_KEY", "env-0-value": "", "env-0-secret_id": str(secret_id)})
    refused = logged_in.post(f"/applications/{application.id}/edit", data=data)
    assert refused.status_code == 422 and "This variable holds a secret. Type its value" in refused.text
    from llmapp import secrets_box

    with app.app_context():
        (var,) = db.session.scalars(db.select(EnvVar).where(EnvVar.name == "API_KEY")).all()
        assert var.is_secret and secrets_box.decrypt(var.value) == "sk-very-secret"
    # With the value typed, it becomes a plain variable with that value.
    data["env-0-value"] = "now-plain"
    assert logged_in.post(f"/applications/{application.id}/edit", data=data).status_code == 303
    with app.app_context():
        (var,) = db.session.scalars(db.select(EnvVar)).all()
        assert (var.name, var.value, var.is_secret) == ("API_KEY", "now-plain", False)


def test_a_secret_id_of_another_application_is_not_copied(logged_in, factory, app, member):
    model = factory.model()
    create_with_secret(logged_in, model)
    with app.app_context():
        foreign_id = db.session.scalar(db.select(EnvVar.id).where(EnvVar.name == "API_KEY"))
    target = factory.application(member, model, name="thief")
    logged_in.post(
        f"/applications/{target.id}/edit",
        data=form_data(
            model,
            name="thief",
            **{"env-0-name": "STOLEN", "env-0-value": "", "env-0-secret": "y", "env-0-secret_id": str(foreign_id)},
        ),
    )
    from llmapp import secrets_box

    with app.app_context():
        var = db.session.scalar(db.select(EnvVar).where(EnvVar.name == "STOLEN"))
        assert secrets_box.decrypt(var.value) == ""


def test_detail_page_sections(logged_in, factory, member):
    application = factory.application(member, factory.model(name="Qwen"), name="support-bot", description="Helps.")
    text = logged_in.get(f"/applications/{application.id}").text
    for expected in (
        "support-bot",
        "Helps.",
        "Qwen",
        "Max concurrency",
        "Monitoring",
        "Logs",
        "Plugins",
        "member@example.com",
        "Created",
        "Never deployed",
        "No plugins: requests reach the model as sent",
    ):
        assert expected in text


# --- edit and delete refused while not stopped -------------------------------------------------


@pytest.mark.parametrize("status", ["deploying", "stopping"])
def test_edit_and_delete_refused_by_the_server(logged_in, factory, member, app, status):
    model = factory.model()
    application = factory.application(member, model, name="busy", status=status)
    page = logged_in.get(f"/applications/{application.id}/edit", follow_redirects=True)
    assert f"busy is {status}: wait until it is running, stopped or failed to edit it." in page.text
    response = logged_in.post(f"/applications/{application.id}/edit", data=form_data(model, name="changed"))
    assert response.status_code == 409
    assert f"An application can be edited only while stopped, failed or running; this one is {status}." in response.text
    assert 'value="changed"' in response.text  # what the user typed is kept
    response = logged_in.delete(f"/applications/{application.id}/delete", headers=HX, follow_redirects=False)
    assert response.headers["HX-Redirect"] == f"/applications/{application.id}"
    assert "can be deleted only while stopped or failed" in logged_in.get(f"/applications/{application.id}").text
    (row,) = stored(app)
    assert (row.name, row.status) == ("busy", status)


def test_delete(logged_in, factory, member, app):
    application = factory.application(member, factory.model(), name="doomed")
    create_with_secret(logged_in, factory.model())
    response = logged_in.delete(f"/applications/{application.id}/delete", headers=HX)
    assert response.headers["HX-Redirect"] == "/applications/"
    assert [a.name for a in stored(app)] == ["support-bot"]
    assert "Application “doomed” deleted." in logged_in.get("/applications/").text
    (remaining,) = stored(app)
    assert logged_in.post(f"/applications/{remaining.id}/delete").status_code == 303
    with app.app_context():
        assert db.session.scalars(db.select(EnvVar)).all() == []  # the environment went with it


# --- ownership --------------------------------------------------------------------------------


def test_another_members_application_is_404_everywhere(logged_in, factory, app):
    model = factory.model()
    theirs = factory.application(factory.user("other@example.com"), model, name="theirs")
    for method, url in [
        ("get", f"/applications/{theirs.id}"),
        ("get", f"/applications/{theirs.id}/edit"),
        ("post", f"/applications/{theirs.id}/edit"),
        ("post", f"/applications/{theirs.id}/delete"),
        ("delete", f"/applications/{theirs.id}/delete"),
        ("get", f"/applications/{theirs.id}/playground"),
        ("post", f"/applications/{theirs.id}/playground"),
        ("get", f"/applications/{theirs.id}/playground/{'0' * 32}"),
        ("post", f"/applications/{theirs.id}/playground/clear"),
        ("get", "/applications/not-a-uuid"),
    ]:
        response = getattr(logged_in, method)(url, data=form_data(model, name="hijacked") if method == "post" else None)
        assert response.status_code == 404, (method, url)
    assert "theirs" not in logged_in.get("/applications/").text
    (row,) = stored(app)
    assert row.name == "theirs"


def test_admin_sees_and_manages_everyones_applications(client, auth, factory, admin, app):
    model = factory.model()
    theirs = factory.application(factory.user("other@example.com"), model, name="theirs")
    auth.login(admin)
    assert "theirs" in client.get("/applications/").text
    assert client.get(f"/applications/{theirs.id}").status_code == 200
    assert (
        client.post(f"/applications/{theirs.id}/edit", data=form_data(model, name="theirs-edited")).status_code == 303
    )
    (row,) = stored(app)
    assert row.name == "theirs-edited" and row.created_by_id != admin.id


def test_pages_need_login(client, factory):
    for url in ("/applications/", "/applications/new", "/models/", "/plugins/"):
        response = client.get(url)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_detail_polls_its_live_fragment_while_deploying(logged_in, factory, member, app):
    application = factory.application(
        member,
        factory.model(),
        name="moving",
        status="deploying",
        deploy_phases=[
            {
                "name": "queued",
                "started_at": "2026-01-01T00:00:00.000",
                "ended_at": None,
                "seconds": None,
                "status": "running",
            }
        ],
    )
    page = logged_in.get(f"/applications/{application.id}")
    assert "<html" in page.text and 'hx-trigger="every 1s"' in page.text and "API keys" in page.text
    fragment = logged_in.get(f"/applications/{application.id}", headers=HX)
    assert fragment.text.lstrip().startswith('<div id="live"') and "<html" not in fragment.text
    assert "Deploying" in fragment.text and "queued" in fragment.text and "API keys" not in fragment.text
    # It becomes running: the next poll shows it with its deploy time, and tells the rest of the page
    # (the Monitoring pane refreshes on that event).
    with app.app_context():
        db.session.get(Application, application.id).status = "running"
        db.session.get(Application, application.id).deployed_at = datetime(2026, 1, 1, 0, 0, 30)
        db.session.commit()
    polled = logged_in.get(f"/applications/{application.id}?seen=deploying", headers=HX)
    assert polled.headers["HX-Trigger"] == "application-status-changed"
    assert "Deployed Jan 1, 2026, 00:00 UTC" in polled.text and "Deploying" not in polled.text
    seen = re.search(r"seen=([^\"&]+)", polled.text).group(1)  # what this poll saw, for the next one
    assert seen.startswith("running.")
    assert "HX-Trigger" not in logged_in.get(f"/applications/{application.id}?seen={seen}", headers=HX).headers
    monitoring = logged_in.get(f"/applications/{application.id}/monitoring", headers=HX).text
    assert "application-status-changed from:body" in monitoring

    stopped = factory.application(member, factory.model(), name="still")
    assert "hx-trigger" not in logged_in.get(f"/applications/{stopped.id}", headers=HX).text
    # Deploying it leaves no "Deploying…" flash behind, to sit above a Running or Failed badge later.
    assert logged_in.post(f"/applications/{stopped.id}/deploy", headers=HX).headers["HX-Redirect"]
    page = logged_in.get(f"/applications/{stopped.id}").text
    assert "Deploying: its server is starting." in page and "“still”…" not in page


def test_delete_clears_the_applications_keys_and_logs_from_redis(logged_in, factory, member, app):
    import redis

    from llmapp import keyspace
    from llmapp.runtime import logs
    from llmapp.services import api_keys

    application = factory.application(member, factory.model(), name="gone")
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    with app.app_context():
        api_keys.create_key(db.session.get(Application, application.id), "k")
    logs.append(connection, application.id, "hello")
    assert connection.exists(keyspace.api_keys(application.id), keyspace.logs(application.id)) == 2
    assert logged_in.post(f"/applications/{application.id}/delete").status_code == 303
    assert connection.exists(keyspace.api_keys(application.id), keyspace.logs(application.id)) == 0


def test_call_snippets_quote_any_application_name(app):
    """A name is free text: the snippets still parse as shell and Python and send that exact name."""
    import ast
    import json
    import shlex
    from types import SimpleNamespace

    from conftest import call_snippets

    name = """it's "odd" <b>&"""
    with app.test_request_context():
        macro = app.jinja_env.get_template("_macros.html").module.call_snippets
        for key in (None, "llm-abc"):
            snippets = dict(call_snippets(str(macro(SimpleNamespace(name=name, endpoint="http://h:1/v1"), key=key))))
            words = shlex.split(snippets["sh"].replace("\\\n", " "))
            assert json.loads(words[words.index("-d") + 1])["model"] == name
            assert f"Authorization: Bearer {key or '$LLMAPP_KEY'}" in words
            keywords = [n for n in ast.walk(ast.parse(snippets["python"])) if isinstance(n, ast.keyword)]
            assert next(k for k in keywords if k.arg == "model").value.value == name
