"""Bad input a person or a script can send the pages: each gets a clear answer, never a 500, and
nothing is stored wrongly."""

import concurrent.futures
import re

import pytest

from conftest import HX
from llmapp.extensions import db
from llmapp.models import Application, EnvVar
from test_applications import form_data, stored

HUGE = str(10**18)


def test_huge_numbers_in_urls_and_forms_are_not_overflows(logged_in, factory, member, app):
    model = factory.model(name="Qwen-0.5B")
    application = factory.application(member, model, name="bot")
    assert logged_in.get(f"/applications/?page={HUGE}").status_code == 200
    assert logged_in.get("/applications/?page=-3").status_code == 200
    assert logged_in.get(f"/applications/recommendation?model_id={HUGE}").status_code == 200
    assert logged_in.get(f"/applications/recommendation/apply?model_id={HUGE}").status_code == 200
    assert logged_in.get(f"/applications/env-row?index={HUGE}").status_code == 200
    assert logged_in.post(f"/applications/{application.id}/keys/{HUGE}/revoke", headers=HX).status_code == 404
    assert logged_in.get(f"/models/{HUGE}/edit").status_code == 404
    refused = logged_in.post("/applications/new", data=form_data(model, name="huge", model_id=HUGE))
    assert refused.status_code == 422 and "Choose a model from the registry." in refused.text
    refused = logged_in.post(
        "/applications/new", data=form_data(model, name="huge", **{"env-0-name": "A", "env-0-secret_id": HUGE})
    )
    assert refused.status_code == 422 and "Invalid secret reference." in refused.text
    assert [a.name for a in stored(app)] == ["bot"]


def test_a_request_larger_than_the_limit_is_refused_before_it_is_parsed(logged_in, factory, app):
    model = factory.model()
    big = form_data(model, name="big", description="x" * (3 * 1024 * 1024))
    response = logged_in.post("/applications/new", data=big)
    assert response.status_code == 413 and "larger than this platform accepts" in response.text
    assert "x" * 1000 not in response.text and stored(app) == []


def test_more_environment_variables_than_allowed_is_an_error_not_a_silent_cut(logged_in, factory, app):
    model = factory.model()
    rows = {}
    for i in range(101):
        rows[f"env-{i}-name"] = f"VAR_{i}"
        rows[f"env-{i}-value"] = str(i)
    response = logged_in.post("/applications/new", data=form_data(model, **rows))
    assert response.status_code == 422
    assert "At most 100 environment variables; there are 101. Remove some." in response.text
    assert 'value="VAR_100"' in response.text  # every row the user typed is still there
    assert stored(app) == []


@pytest.mark.parametrize("field", ["name", "description", "env-0-value", "env-0-name"], ids=lambda f: f"NUL in {f}")
def test_nul_characters_are_refused_at_their_field(logged_in, factory, app, field):
    model = factory.model()
    data = form_data(model, **{"env-0-name": "GREETING", "env-0-value": "hello"})
    data[field] = data.get(field, "x") + "\x00tail"
    response = logged_in.post("/applications/new", data=data)
    assert response.status_code == 422 and "Contains a NUL character" in response.text
    assert stored(app) == []
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(EnvVar)) == 0


def test_nul_characters_in_login_and_registry_forms(client, admin, auth):
    refused = client.post("/login", data={"email": "a\x00@example.com", "password": "x"})
    assert refused.status_code == 422 and "Contains a NUL character" in refused.text
    auth.login(admin)
    response = client.post(
        "/models/new",
        data={"name": "m\x00", "parameters_billions": "1", "precision": "fp32", "context_length": "8",
              "engine": "transformers", "source": "/models/x"},
    )  # fmt: skip
    assert response.status_code == 422 and "Contains a NUL character" in response.text


def test_a_secret_typed_before_a_validation_error_is_not_echoed_but_kept(logged_in, factory, app):
    model = factory.model()
    data = form_data(model, name="", **{"env-0-name": "API_KEY", "env-0-value": "sk-typed-once", "env-0-secret": "y"})
    response = logged_in.post("/applications/new", data=data)
    assert response.status_code == 422 and "Name is required." in response.text
    assert "sk-typed-once" not in response.text  # not in the password input's value, nor anywhere
    token = re.search(r'name="env-0-secret_token" type="hidden" value="([^"]+)"', response.text).group(1)
    data.update({"name": "kept", "env-0-value": "", "env-0-secret_token": token})
    assert logged_in.post("/applications/new", data=data).status_code == 303
    (application,) = stored(app, name="kept")
    with app.app_context():
        from llmapp import secrets_box

        var = db.session.scalar(db.select(EnvVar).filter_by(application_id=application.id))
        assert var.is_secret and secrets_box.decrypt(var.value) == "sk-typed-once"
    tampered = form_data(
        model, name="tampered", **{"env-0-name": "K", "env-0-secret": "y", "env-0-secret_token": "gAAAAnot-a-token"}
    )
    response = logged_in.post("/applications/new", data=tampered)
    assert response.status_code == 422 and "Type this secret again." in response.text


def test_deploy_and_delete_at_the_same_instant_never_answer_500(app, factory, member, auth):
    """A deploy and a delete of one stopped application race: one wins, the other is told why."""
    model = factory.model()
    clients = [app.test_client(), app.test_client()]
    for client in clients:
        assert client.post("/login", data={"email": member.email, "password": "password123"}).status_code == 302
    for attempt in range(8):
        application = factory.application(member, model, name=f"race-{attempt}")
        start = concurrent.futures.ThreadPoolExecutor(2)
        deploying = start.submit(clients[0].post, f"/applications/{application.id}/deploy", headers=HX)
        deleting = start.submit(clients[1].post, f"/applications/{application.id}/delete", headers=HX)
        statuses = {deploying.result().status_code, deleting.result().status_code}
        start.shutdown()
        assert 500 not in statuses, statuses
        with app.app_context():
            left = db.session.get(Application, application.id)
        assert left is None or left.status == "deploying"  # either it was deleted, or it deploys


def test_names_that_differ_only_in_case_are_one_name_held_by_the_database(app, factory, member, admin):
    """The services compare names in any case; the database holds the same rule, so a create that
    passed the services' check in parallel with another can't store the second spelling. (The factory
    writes rows through the models, past the services' checks.)"""
    import sqlalchemy.exc

    from llmapp.models import Plugin

    model = factory.model(name="Tiny")
    factory.application(member, model, name="Bot")
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        factory.model(name="TINY")
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        factory.application(member, model, name="bOT")
    factory.application(member, model, name="Äpp")
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # in every alphabet, on SQLite as on PostgreSQL
        factory.application(member, model, name="äPP")
    with app.app_context():
        db.session.add(Plugin(name="x", type="system_prompt", created_by_id=member.id))
        db.session.commit()
        db.session.add(Plugin(name="X", type="system_prompt", created_by_id=member.id))
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            db.session.commit()
    factory.application(admin, model, name="bot")  # another owner may use the same name


def test_parallel_creates_of_one_name_in_many_cases_store_one(app, factory, member):
    model = factory.model()
    clients = [app.test_client() for _ in range(10)]
    for client in clients:
        assert client.post("/login", data={"email": member.email, "password": "password123"}).status_code == 302
    spellings = ["Bot", "bot", "BOT", "bOt", "boT", "BOt", "bOT", "BoT", "Bot", "bot"]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda c, n: c.post("/applications/new", data=form_data(model, name=n)), clients, spellings)
        )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(303) == 1 and set(codes) <= {303, 409, 422}, codes  # one stored, the others told why
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 1
