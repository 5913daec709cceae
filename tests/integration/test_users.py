"""Users: the admin's page, a user's own password, disabled accounts, and the CLI."""

import json
import re

from flask import template_rendered

from conftest import HX, Auth
from llmapp import i18n
from llmapp.extensions import db
from llmapp.models import User


def user_row(app, email):
    with app.app_context():
        return db.session.scalar(db.select(User).filter_by(email=email))


def second_client(app, user, password="password123"):
    """Another browser, logged in as ``user``."""
    client = app.test_client()
    Auth(client).login(user, password)
    return client


def test_admin_lists_creates_and_gets_errors_at_the_field(client, auth, admin, member, app):
    auth.login(admin)
    page = client.get("/users/").text
    assert "member@example.com" in page and "admin@example.com" in page and "Add a user" in page
    refused = client.post("/users/", data={"email": "not-an-email", "password": "short"}, headers=HX)
    assert refused.status_code == 422 and "is not an email address" in refused.text
    short = client.post("/users/", data={"email": "new@example.com", "password": "short"}, headers=HX)
    assert short.status_code == 422 and "at least 8 characters" in short.text
    assert 'value="new@example.com"' in short.text  # what was typed stays
    taken = client.post("/users/", data={"email": "Member@Example.com", "password": "long enough"}, headers=HX)
    assert taken.status_code == 422 and "already exists" in taken.text
    created = client.post("/users/", data={"email": "new@example.com", "password": "long enough", "admin": "y"})
    assert created.status_code == 303 and "User new@example.com created." in client.get("/users/").text
    assert user_row(app, "new@example.com").is_admin
    second_client(app, "new@example.com", "long enough")  # logs in with that password


def test_members_can_not_see_or_change_users(logged_in, admin):
    for method, url in [
        ("get", "/users/"),
        ("post", "/users/"),
        ("post", f"/users/{admin.id}/admin"),
        ("post", f"/users/{admin.id}/disable"),
        ("post", f"/users/{admin.id}/reset-password"),
    ]:
        assert getattr(logged_in, method)(url).status_code == 403, url
    assert 'href="/users/"' not in logged_in.get("/applications/").text  # no Users link for a member


def test_make_and_unmake_admin_never_leaves_no_admin(client, auth, admin, member, app):
    auth.login(admin)
    refused = client.post(f"/users/{admin.id}/admin", data={"admin": "0"}, headers=HX)
    assert "is the last admin" in refused.text and user_row(app, admin.email).is_admin
    made = client.post(f"/users/{member.id}/admin", data={"admin": "1"}, headers=HX)
    assert made.text.lstrip().startswith(f'<tr id="user-{member.id}"') and "Now an admin." in made.text
    assert user_row(app, member.email).is_admin
    client.post(f"/users/{member.id}/admin", data={"admin": "0"}, headers=HX)
    assert not user_row(app, member.email).is_admin
    assert client.post("/users/424242/admin", data={"admin": "1"}).status_code == 404


def test_disabling_ends_every_login_at_once(client, auth, admin, member, app, runner):
    theirs = app.test_client()
    Auth(theirs).login(member)
    remembered = app.test_client()
    remembered.post("/login", data={"email": member.email, "password": "password123", "remember": "y"})
    assert theirs.get("/applications/").status_code == 200

    auth.login(admin)
    assert "You can&#39;t disable your own account." in client.post(f"/users/{admin.id}/disable", headers=HX).text
    done = client.post(f"/users/{member.id}/disable", headers=HX)
    assert "Disabled: their logins have ended." in done.text and "disabled" in done.text
    # Their session and their remember-me cookie stop working on the next request.
    for browser in (theirs, remembered):
        assert browser.get("/applications/").status_code == 302
        browser.delete_cookie("session")
        assert browser.get("/applications/").status_code == 302
    # They can't log in again, and are told why only once the password is right.
    wrong = app.test_client().post("/login", data={"email": member.email, "password": "wrong-password"})
    assert "Wrong email or password." in wrong.text and "disabled" not in wrong.text
    told = app.test_client().post("/login", data={"email": member.email, "password": "password123"})
    assert told.status_code == 403 and "This account is disabled." in told.text

    client.post(f"/users/{member.id}/enable", headers=HX)
    second_client(app, member)
    # The CLI does the same.
    result = runner.invoke(args=["users", "disable", member.email])
    assert result.exit_code == 0 and user_row(app, member.email).disabled_at is not None
    listed = json.loads(runner.invoke(args=["users", "list", "--json"]).output)
    assert {(u["email"], u["admin"], u["disabled"]) for u in listed} == {
        (admin.email, True, False),
        (member.email, False, True),
    }
    assert re.search(r"member@example.com\s+member\s+disabled", runner.invoke(args=["users", "list"]).output)
    assert runner.invoke(args=["users", "disable", admin.email]).exit_code == 1  # the last admin
    assert runner.invoke(args=["users", "disable", "nobody@example.com"]).exit_code == 1


def test_an_admin_resets_a_password_and_it_is_shown_once(client, auth, admin, member, app):
    theirs = second_client(app, member)
    auth.login(admin)
    reset = client.post(f"/users/{member.id}/reset-password", headers=HX).text
    password = re.search(r'class="mono new-password">([^<]+)<', reset).group(1)
    assert password not in client.get("/users/").text  # shown once
    assert theirs.get("/applications/").status_code == 302  # their logins ended
    refused = app.test_client().post("/login", data={"email": member.email, "password": "password123"})
    assert refused.status_code == 422
    second_client(app, member, password)


def test_a_user_changes_their_own_password(client, auth, member, app):
    other_browser = second_client(app, member)
    auth.login(member)
    assert "Change your password" in client.get("/users/account").text

    def change(current, new, confirm):
        return client.post("/users/account", data={"current": current, "new": new, "confirm": confirm})

    wrong = change("nope-nope", "a new password", "a new password")
    assert wrong.status_code == 422 and "That is not your current password." in wrong.text
    differ = change("password123", "a new password", "other")
    assert differ.status_code == 422 and "The two new passwords differ." in differ.text
    short = change("password123", "short", "short")
    assert short.status_code == 422 and "at least 8 characters" in short.text
    done = change("password123", "a new password", "a new password")
    assert done.status_code == 303
    assert "Password changed." in client.get("/users/account").text  # this login goes on
    assert other_browser.get("/applications/").status_code == 302  # the other one has ended
    second_client(app, member, "a new password")


def test_anyone_switches_the_language_and_a_cookie_keeps_it(client):
    switched = client.post("/language", data={"language": "zh", "next": "/login"})
    assert switched.status_code == 303 and switched.headers["Location"] == "/login"
    cookie = client.get_cookie(i18n.COOKIE)
    assert cookie.value == "zh" and cookie.http_only and cookie.same_site == "Lax"
    assert cookie.expires is not None  # kept across browser restarts (COOKIE_MAX_AGE)
    # The cookie's choice wins over the browser's Accept-Language.
    assert '<html lang="zh-CN">' in client.get("/login", headers={"Accept-Language": "en"}).text
    # "" follows the browser again; a next on another site is refused (no open redirect).
    back = client.post("/language", data={"language": "", "next": "https://elsewhere.example/"})
    assert back.status_code == 303 and "elsewhere" not in back.headers["Location"]
    assert client.get_cookie(i18n.COOKIE) is None
    assert '<html lang="en">' in client.get("/login", headers={"Accept-Language": "en"}).text
    refused = client.post("/language", data={"language": "xx", "next": "/login"})
    assert refused.status_code == 303 and client.get_cookie(i18n.COOKIE) is None
    assert "Unknown language." in client.get("/login").text


def test_a_signed_in_users_language_is_saved_on_their_account(client, auth, member, app):
    auth.login(member)
    saved = client.post("/language", data={"language": "zh", "next": "/users/account"})
    assert saved.status_code == 303 and saved.headers["Location"] == "/users/account"
    assert user_row(app, member.email).locale == "zh" and client.get_cookie(i18n.COOKIE).value == "zh"
    # The Account page's form starts on the saved choice; the account's choice wins over the browser's.
    shown = []

    def record(sender, template, context, **extra):
        shown.append(context)

    with template_rendered.connected_to(record, app):
        page = client.get("/users/account", headers={"Accept-Language": "en"})
    assert page.status_code == 200 and '<html lang="zh-CN">' in page.text
    form = next(context["language_form"] for context in shown if "language_form" in context)
    assert form.language.data == "zh" and form.next.data == "/users/account"
    assert [value for value, _label in form.language.choices] == ["", "en", "zh"]
    # Another browser of theirs, without the cookie, speaks it too.
    other = second_client(app, member)
    assert '<html lang="zh-CN">' in other.get("/applications/", headers={"Accept-Language": "en"}).text
    # A language the platform doesn't speak is refused, not a 500; nothing changes.
    refused = client.post("/language", data={"language": "klingon", "next": "/users/account"})
    assert refused.status_code == 303 and user_row(app, member.email).locale == "zh"
    # "" follows the browser again: cleared on the account, the cookie deleted.
    client.post("/language", data={"language": "", "next": "/users/account"})
    assert user_row(app, member.email).locale is None and client.get_cookie(i18n.COOKIE) is None
    client.post("/language", data={"language": "\x00zh", "next": "/users/account"})
    page = client.get("/users/account", headers={"Accept-Language": "en"})
    assert '<html lang="en">' in page.text and "Unknown language." in page.text
