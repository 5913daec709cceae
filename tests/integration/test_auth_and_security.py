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


def test_a_login_verifies_a_password_hash_whether_or_not_the_address_exists(client, member, monkeypatch):
    """So the time a login takes doesn't tell an unknown address from a wrong password."""
    import werkzeug.security

    from llmapp import models
    from llmapp.services import users

    verified = []

    def counting(hash_, password):
        verified.append(hash_)
        return werkzeug.security.check_password_hash(hash_, password)

    monkeypatch.setattr(users, "check_password_hash", counting)
    monkeypatch.setattr(models, "check_password_hash", counting)
    for email in ("nobody@example.com", member.email):
        verified.clear()
        assert client.post("/login", data={"email": email, "password": "wrong"}).status_code == 422
        assert len(verified) == 1 and verified[0].startswith("scrypt:"), email


@pytest.mark.parametrize(
    "config_overrides", [{"LOGIN_RATE_LIMIT": "100 per minute", "LOGIN_ACCOUNT_RATE_LIMIT": "3 per minute"}]
)
def test_logins_are_limited_per_account_from_any_address(client, member, factory, config_overrides):
    other = factory.user("other@example.com")
    for _ in range(4):  # the account's own successful logins don't count against it
        assert client.post("/login", data={"email": member.email, "password": "password123"}).status_code == 302
        client.post("/logout")
    for n in range(3):
        bad = client.post(
            "/login", data={"email": member.email, "password": "bad"}, environ_base={"REMOTE_ADDR": f"10.9.0.{n}"}
        )
        assert bad.status_code == 422
    again = client.post(
        "/login", data={"email": member.email, "password": "password123"}, environ_base={"REMOTE_ADDR": "10.9.1.1"}
    )
    assert again.status_code == 429
    # Another account from the same addresses is not locked out by them.
    ok = client.post(
        "/login", data={"email": other.email, "password": "password123"}, environ_base={"REMOTE_ADDR": "10.9.0.1"}
    )
    assert ok.status_code == 302


LOGINS_BEHIND_A_PROXY = {"LOGIN_RATE_LIMIT": "3 per minute", "LOGIN_ACCOUNT_RATE_LIMIT": "100 per minute"}


@pytest.mark.parametrize("config_overrides", [{**LOGINS_BEHIND_A_PROXY, "TRUSTED_PROXIES": 1}])
def test_behind_a_trusted_proxy_the_address_limit_is_per_client(app, member, factory, config_overrides):
    proxy = {"REMOTE_ADDR": "192.0.2.10"}
    attacker = app.test_client()
    for _ in range(3):
        attacker.post(
            "/login",
            data={"email": "x@example.com", "password": "bad"},
            environ_base=proxy,
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
    assert (
        attacker.post(
            "/login",
            data={"email": "x@example.com", "password": "bad"},
            environ_base=proxy,
            headers={"X-Forwarded-For": "198.51.100.7"},
        ).status_code
        == 429
    )
    colleague = app.test_client()  # behind the same proxy, from another address
    ok = colleague.post(
        "/login",
        data={"email": member.email, "password": "password123"},
        environ_base=proxy,
        headers={"X-Forwarded-For": "198.51.100.8"},
    )
    assert ok.status_code == 302


@pytest.mark.parametrize("config_overrides", [LOGINS_BEHIND_A_PROXY])
def test_without_trusted_proxies_a_forwarded_address_changes_nothing(client, member, config_overrides):
    for n in range(3):  # a client that makes up X-Forwarded-For still counts as its own address
        client.post(
            "/login", data={"email": "x@example.com", "password": "bad"}, headers={"X-Forwarded-For": f"203.0.113.{n}"}
        )
    refused = client.post(
        "/login", data={"email": member.email, "password": "password123"}, headers={"X-Forwarded-For": "203.0.113.99"}
    )
    assert refused.status_code == 429


def test_in_production_both_login_cookies_are_https_only(database_url, redis_url, member, monkeypatch):
    from conftest import make_config
    from llmapp import create_app

    monkeypatch.delenv("LLMAPP_INSECURE_COOKIES", raising=False)
    production = create_app(make_config(database_url, redis_url, LLMAPP_ENV="production"))
    assert production.config["SESSION_COOKIE_SECURE"] and production.config["REMEMBER_COOKIE_SECURE"]
    client = production.test_client()
    response = client.post(
        "/login",
        data={"email": member.email, "password": "password123", "remember": "y"},
        base_url="https://llmapp.example",
    )
    assert response.status_code == 302
    cookies = {header.split("=", 1)[0]: header for header in response.headers.getlist("Set-Cookie")}
    assert "Secure" in cookies["remember_token"] and "Secure" in cookies["session"]


def test_a_lazy_message_with_a_members_text_in_it_is_escaped_like_any_text(app):
    """Flask-Babel's lazy strings pass for ready HTML (Jinja and WTForms would print them raw); ours are text:
    a name inside one reaches the page escaped, in either language."""
    from flask import render_template_string
    from wtforms import Form, StringField

    from llmapp.i18n import _l

    for language in ("en", "zh-CN"):
        with app.test_request_context(headers={"Accept-Language": language}):
            message = _l("Application “%(name)s” created.", name="<img src=x onerror=alert(1)>")
            page = render_template_string("<p>{{ message }}</p>", message=message)
            assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page

            class Labelled(Form):
                field = StringField(_l("Name"))

            label = Labelled().field.label(text=_l("Remove %(name)s", name="<b>bold</b>"))
            assert "<b>" not in label and "&lt;b&gt;bold&lt;/b&gt;" in label
