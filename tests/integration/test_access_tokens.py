"""Personal access tokens for the REST API: made on the account page or with `flask tokens`, shown once,
stored hashed, with an optional expiry and a last-used time; revoked by hand or when the user is disabled."""

import json
import re
import shlex
from datetime import timedelta

from conftest import HX, call_snippets
from llmapp.extensions import db
from llmapp.models import AccessToken, utcnow
from llmapp.services import OPERATOR, access_tokens, users


def tokens_of(app, user):
    with app.app_context():
        return db.session.scalars(db.select(AccessToken).filter_by(user_id=user.id)).all()


def authenticates(app, plain):
    with app.app_context():
        user = access_tokens.authenticate(plain)
        return user and user.email


def test_a_token_is_made_on_the_account_page_shown_once_and_stored_hashed(logged_in, app, member):
    page = logged_in.get("/users/account").text
    assert "API tokens" in page and 'name="expires_days"' in page
    refused = logged_in.post("/users/account/tokens", data={"name": "  ", "expires_days": "30"}, headers=HX)
    assert refused.status_code == 422 and "Give the token a name" in refused.text
    odd = logged_in.post("/users/account/tokens", data={"name": "ci", "expires_days": "9999"}, headers=HX)
    assert odd.status_code == 422 and "Not a valid choice" in odd.text and tokens_of(app, member) == []

    made = logged_in.post("/users/account/tokens", data={"name": "deploy from CI", "expires_days": "30"}, headers=HX)
    assert made.status_code == 200
    plain = re.search(r"(llmapp_pat_[A-Za-z0-9_-]{40,})", made.text).group(1)
    # With a ready-to-run line that uses it, as a new API key comes with its snippets.
    [(lang, curl)] = call_snippets(made.text)
    assert lang == "sh" and shlex.split(curl.replace("\\\n", " ")) == [
        "curl", "http://localhost/api/v1/applications", "-H", f"Authorization: Bearer {plain}"
    ]  # fmt: skip
    (token,) = tokens_of(app, member)
    assert token.token_hash == access_tokens.digest(plain) and plain not in (token.prefix, token.token_hash)
    assert timedelta(days=29) < token.expires_at - utcnow() <= timedelta(days=30)
    assert plain not in logged_in.get("/users/account").text  # shown once
    assert "deploy from CI" in logged_in.get("/users/account").text

    assert token.last_used_at is None and authenticates(app, plain) == member.email
    assert tokens_of(app, member)[0].last_used_at is not None
    assert authenticates(app, plain + "x") is None and authenticates(app, "Bearer " + plain) is None

    revoked = logged_in.post(f"/users/account/tokens/{token.id}/revoke", headers=HX)
    assert revoked.status_code == 200 and "revoked" in revoked.text
    assert authenticates(app, plain) is None


def test_another_users_token_is_not_yours_to_revoke(client, auth, app, factory):
    alice, bob = factory.user("alice@example.com"), factory.user("bob@example.com")
    with app.app_context():
        token, plain = access_tokens.create(db.session.get(type(alice), alice.id), "alices", None)
        token_id = token.id
    auth.login(bob)
    assert client.post(f"/users/account/tokens/{token_id}/revoke", headers=HX).status_code == 404
    assert "alices" not in client.get("/users/account").text
    assert authenticates(app, plain) == "alice@example.com"


def test_expired_tokens_and_disabled_users_let_nobody_in(app, factory, admin):
    user = factory.user("script@example.com")
    with app.app_context():
        owner = db.session.get(type(user), user.id)
        expiring, expiring_plain = access_tokens.create(owner, "short", 1)
        _, lasting = access_tokens.create(owner, "lasting", None)
        expiring.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
        assert access_tokens.state(expiring) == "expired"
    assert authenticates(app, expiring_plain) is None and authenticates(app, lasting) == "script@example.com"
    with app.app_context():
        users.disable(db.session.get(type(user), user.id), acting=OPERATOR)
    assert authenticates(app, lasting) is None
    assert all(t.revoked_at is not None for t in tokens_of(app, user))  # enabling again does not revive them


def test_the_cli_creates_lists_and_revokes_tokens(app, runner, member):
    made = runner.invoke(args=["tokens", "create", member.email, "--name", "nightly", "--expires-days", "7", "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    assert authenticates(app, created["token"]) == member.email and created["expires_at"]
    listed = runner.invoke(args=["tokens", "list", member.email])
    assert "nightly" in listed.output and "active" in listed.output and created["token"] not in listed.output
    bad = runner.invoke(args=["tokens", "create", member.email, "--name", "x", "--expires-days", "0"])
    assert bad.exit_code != 0 and "Between 1 and 366 days" in bad.output
    assert runner.invoke(args=["tokens", "create", "nobody@example.com", "--name", "x"]).exit_code != 0
    assert runner.invoke(args=["tokens", "revoke", member.email, str(created["id"])]).exit_code == 0
    assert authenticates(app, created["token"]) is None
    assert "revoked" in runner.invoke(args=["tokens", "list", member.email]).output
