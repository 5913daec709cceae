import pytest

from conftest import csrf_token_from


def test_login_and_logout(client, member):
    assert "Log in to llmapp" in client.get("/login").text
    response = client.post("/login", data={"email": "MEMBER@example.com", "password": "password123"})
    assert response.status_code == 302 and response.headers["Location"] == "/applications/"
    assert client.get("/applications/").status_code == 200
    assert client.get("/logout").status_code == 405  # a GET changes nothing
    assert client.post("/logout").status_code == 303
    assert client.get("/applications/").status_code == 302


def test_wrong_password(client, member):
    response = client.post("/login", data={"email": member.email, "password": "nope"})
    assert response.status_code == 422 and "Wrong email or password." in response.text


def test_next_stays_on_this_site(client, member):
    ok = client.post("/login?next=/models/", data={"email": member.email, "password": "password123"})
    assert ok.headers["Location"] == "/models/"
    client.post("/logout")
    evil = client.post("/login?next=//evil.example/x", data={"email": member.email, "password": "password123"})
    assert evil.headers["Location"] == "/applications/"


@pytest.mark.parametrize("config_overrides", [{"LOGIN_RATE_LIMIT": "3 per minute"}])
def test_login_attempts_are_rate_limited(client, member, config_overrides):
    for _ in range(3):
        assert client.post("/login", data={"email": member.email, "password": "bad"}).status_code == 422
    response = client.post("/login", data={"email": member.email, "password": "password123"})
    assert response.status_code == 429 and "Too many attempts" in response.text
    assert client.get("/login").status_code == 200  # only attempts count


def test_security_headers_and_cookie_flags(client, member):
    response = client.post("/login", data={"email": member.email, "password": "password123"})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/applications/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline for the CSP to block


@pytest.mark.parametrize("config_overrides", [{"WTF_CSRF_ENABLED": True}])
def test_csrf_on_forms_and_htmx_mutations(client, factory, config_overrides):
    user = factory.user("csrf@example.com")
    model = factory.model()
    application = factory.application(user, model)
    assert client.post("/login", data={"email": user.email, "password": "password123"}).status_code == 400
    token = csrf_token_from(client.get("/login").text)
    client.post("/login", data={"email": user.email, "password": "password123", "csrf_token": token})
    page = client.get("/applications/").text
    header_token = csrf_token_from(page)
    url = f"/applications/{application.id}/delete"
    refused = client.delete(url, headers={"HX-Request": "true"})
    assert refused.status_code == 400 and "Reload the page" in refused.text
    assert client.get(f"/applications/{application.id}").status_code == 200  # still there
    accepted = client.delete(url, headers={"HX-Request": "true", "X-CSRFToken": header_token})
    assert accepted.status_code == 200 and accepted.headers["HX-Redirect"] == "/applications/"
    assert client.get(f"/applications/{application.id}").status_code == 404


def test_errors_are_pages_not_tracebacks(logged_in):
    response = logged_in.get("/applications/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and "No such application, or it is not yours." in response.text


def test_logout_ends_the_session_and_the_remember_me_cookie_on_the_server(app, client, factory, member):
    application = factory.application(member, factory.model(), name="keep-me")
    response = client.post("/login", data={"email": member.email, "password": "password123", "remember": "y"})
    assert response.status_code == 302
    cookies = {name: client.get_cookie(name).value for name in ("session", "remember_token")}
    assert client.post("/logout").status_code == 303

    # Someone who kept a copy of either cookie (a shared computer, a stolen backup) gets nothing.
    for kept in ({"session": cookies["session"]}, {"remember_token": cookies["remember_token"]}, cookies):
        replay = app.test_client()
        for name, value in kept.items():
            replay.set_cookie(name, value)
        assert replay.get("/applications/").status_code == 302  # to the login page
        assert replay.post(f"/applications/{application.id}/delete").status_code == 302
    with app.app_context():
        from llmapp.extensions import db
        from llmapp.models import Application

        assert db.session.get(Application, application.id) is not None

    # Another login of the same user (another browser) is not ended by this one's logout.
    other = app.test_client()
    other.post("/login", data={"email": member.email, "password": "password123"})
    client.post("/login", data={"email": member.email, "password": "password123"})
    client.post("/logout")
    assert other.get("/applications/").status_code == 200
