"""Releases: each saved setup numbered and kept as it was; compared with secrets as changed or not;
the running one marked, followed by a live plugin change, and published for the gateway's header."""

import json

import pytest
import redis

from conftest import HX, ROUTE_KEY, plugin_form, stored_plugin, token_for
from llmapp import keyspace
from llmapp.extensions import db
from llmapp.gateway.table import unsign
from llmapp.models import Application, EnvVar, Release


def releases_of(app, application_id) -> list[Release]:
    with app.app_context():
        rows = db.session.scalars(
            db.select(Release).where(Release.application_id == application_id).order_by(Release.number)
        ).all()
        db.session.expunge_all()
        return rows


def test_each_changed_save_is_the_next_release_and_secrets_are_compared_unseen(app, factory, member):
    from llmapp.services import applications, releases

    model = factory.model()
    with app.app_context():
        owner = db.session.get(type(member), member.id)
        created = applications.create(owner, {"name": "chat", "model_id": model.id})
        application_id = created.id
        row = db.session.get(Application, application_id)
        applications.update(
            row, {"name": "chat", "model_id": model.id, "timeout_s": 99, "note": "longer\nplease"}, owner
        )
        applications.update(row, {"name": "chat", "model_id": model.id, "timeout_s": 99})  # the same setup
        secret = [{"name": "API_KEY", "value": "sk-first", "secret": True}, {"name": "MODE", "value": "a"}]
        applications.update(row, {"name": "chat", "model_id": model.id, "env": secret})
        secret_id = db.session.scalar(db.select(EnvVar.id).where(EnvVar.name == "API_KEY"))
        kept = [
            {"name": "API_KEY", "value": "", "secret": True, "secret_id": secret_id},
            {"name": "MODE", "value": "b"},
        ]
        applications.update(row, {"name": "chat", "model_id": model.id, "env": kept})
        rotated = [{"name": "API_KEY", "value": "sk-second", "secret": True}, {"name": "MODE", "value": "b"}]
        applications.update(row, {"name": "chat", "model_id": model.id, "env": rotated})

        history = releases.history(row)
        assert [(r.number, r.note) for r in history] == [
            (5, "Edited"), (4, "Edited"), (3, "Edited"), (2, "longer please"), (1, "Created"),
        ]  # fmt: skip
        assert history[-1].author.email == member.email and history[0].author is None
        assert history[-1].setup["config"]["timeout_s"] != 99 and history[-2].setup["config"]["timeout_s"] == 99

        def changes(a, b):
            return [(c.what, c.before, c.after) for c in releases.compare(releases.get(row, a), releases.get(row, b))]

        assert changes(1, 2) == [("config.timeout_s", str(history[-1].setup["config"]["timeout_s"]), "99")]
        assert changes(2, 3) == [("env API_KEY", "—", "secret"), ("env MODE", "—", "a")]
        assert changes(3, 4) == [("env MODE", "a", "b")]  # the secret kept: unchanged, so not listed
        assert changes(4, 5) == [("env API_KEY", "secret", "secret (changed)")]
        assert changes(5, 5) == []
        stored = json.dumps([r.setup for r in history])
        assert "sk-first" not in stored and "sk-second" not in stored  # ciphertext and fingerprints only
        assert "sk-" not in json.dumps(releases.shown_setup(history[0]))
        assert releases.serving(row) is None  # stopped: nothing runs


def test_a_live_plugin_change_is_the_running_release_and_the_gateway_is_told(
    app, client, logged_in, factory, member, redis_url
):
    from llmapp.services import lifecycle

    application = factory.application(member, factory.model(), name="live")
    with app.app_context():
        from llmapp.services import applications, releases

        releases.history(db.session.get(Application, application.id))  # release 1: from before releases
        lifecycle.transition(application.id, "deploy", deploy_id="d1")
        lifecycle.transition(application.id, "deployed", endpoint="http://127.0.0.1:1/v1", deployed_release=1)
    logged_in.post("/plugins/new", data=plugin_form("system_prompt", name="tone", prompt="Be brief.", mode="prepend"))
    plugin = stored_plugin(app, "tone")
    attached = logged_in.post(f"/applications/{application.id}/plugins", data={"plugin_id": plugin.id}, headers=HX)
    assert attached.status_code == 200
    (first, second) = releases_of(app, application.id)
    assert (second.number, second.note, second.setup["plugins"][0]["name"]) == (2, "Attached “tone”", "tone")
    with app.app_context():
        row = db.session.get(Application, application.id)
        assert row.deployed_release == 2 and applications.summary(row)["status"] == "running"
    signed = redis.Redis.from_url(redis_url).hget(keyspace.routes(), str(application.id))
    route = json.loads(unsign(ROUTE_KEY, signed))
    assert route["release"] == 2  # the number the gateway's answers carry

    # The pane lists both, the running one marked, and compares any two (a bad number is said, not a 500).
    pane = logged_in.get(f"/applications/{application.id}/releases?a=1&b=2", headers=HX)
    assert pane.status_code == 200 and "Attached “tone”" in pane.text and "plugin chain" in pane.text
    assert "running" in pane.text and "From release 1 to 2" in pane.text
    bad = logged_in.get(f"/applications/{application.id}/releases?a=1&b=77", headers=HX)
    assert bad.status_code == 200 and "has no release 77" in bad.text
    page = logged_in.get(f"/applications/{application.id}")
    assert page.status_code == 200 and 'id="releases"' in page.text

    # The API lists them, the running one current, a secret never in the clear; an unknown number is 404.
    headers = {"Authorization": f"Bearer {token_for(app, member)}"}
    listed = client.get(f"/api/v1/applications/{application.id}/releases", headers=headers).get_json()
    assert [(r["number"], r["current"]) for r in listed["items"]] == [(2, True), (1, False)]
    one = client.get(f"/api/v1/applications/{application.id}/releases/1", headers=headers).get_json()
    assert one["number"] == 1 and one["setup"]["plugins"] == []
    assert client.get(f"/api/v1/applications/{application.id}/releases/99", headers=headers).status_code == 404


def test_the_command_line_edits_into_a_release_and_lists_them(app, runner, factory, member):
    application = factory.application(member, factory.model(), name="cli-app")
    edited = runner.invoke(args=["apps", "edit", "cli-app", "--set", "timeout_s=77", "--note", "slow", "--json"])
    assert edited.exit_code == 0, edited.output
    assert json.loads(edited.output)["release"] == 2  # 1: the setup from before, recorded first
    again = runner.invoke(args=["apps", "edit", "cli-app", "--set", "timeout_s=77", "--json"])
    assert json.loads(again.output)["release"] == 2  # nothing changed: no new release
    refused = runner.invoke(args=["apps", "edit", "cli-app", "--set", "timeout_s=0"])
    assert refused.exit_code == 1 and "timeout_s:" in refused.output
    listed = runner.invoke(args=["apps", "releases", "cli-app", "--json"])
    rows = json.loads(listed.output)
    assert [(r["number"], r["current"], r["note"]) for r in rows] == [(2, False, "slow"), (1, False, rows[1]["note"])]
    with app.app_context():
        assert db.session.get(Application, application.id).config["timeout_s"] == 77


def test_a_plugin_is_followed_by_its_id_and_a_note_is_one_plain_line(app, factory, member):
    from llmapp.services import applications, plugins, releases

    application = factory.application(member, factory.model(), name="tracked")
    with app.app_context():
        owner = db.session.get(type(member), member.id)
        brief = {"system_prompt": "Be brief."}
        plugin = plugins.create(owner, {"name": "tone", "type": "system_prompt", "config": brief})
        row = db.session.get(Application, application.id)
        plugins.attach(row, owner, plugin.id)
        plugins.update(plugin, owner, {"name": "voice", "type": "system_prompt", "config": brief})
        plugins.set_enabled(plugin, owner, False)
        update = {"name": "tracked", "model_id": row.model_id, "note": "fix \x1b[31mred\x1b[0m\u2028two\u202elines"}
        applications.update(row, update, owner)
        history = {r.number: r for r in releases.history(row)}
        assert [history[n].note for n in sorted(history)] == [
            releases.FIRST_NOTE, "Attached “tone”", "Plugin “voice” changed", "Plugin “voice” turned off",
            "fix [31mred [0m two lines",
        ]  # fmt: skip

        def changes(a, b):
            return [(c.what, c.before, c.after) for c in releases.compare(history[a], history[b])]

        assert changes(2, 3) == [("plugin voice: name", "tone", "voice")]  # the same plugin, renamed
        assert changes(3, 4) == [("plugin voice: on", "on", "off")]
        assert changes(1, 2) == [("plugin chain", "—", "tone")]


def running_at(app, application_id, release: int, *, replicas=1) -> None:
    """The application as a deploy leaves it: running ``release`` on ``replicas`` ready servers."""
    from llmapp.models import Replica
    from llmapp.services import lifecycle, releases

    with app.app_context():
        lifecycle.transition(application_id, "deploy", deploy_id="d1")
        row = db.session.get(Application, application_id)
        for port in range(replicas):
            row.replicas.append(
                Replica(release=release, deploy_id="d1", host="h", address="127.0.0.1", port=1 + port, status="ready")
            )
        releases.mark_served(application_id, release)
        db.session.commit()
        lifecycle.transition(application_id, "deployed", endpoint="http://127.0.0.1:1/v1", deployed_release=release)


def test_a_live_change_beside_a_draft_keeps_the_servers_release_and_the_draft_newest(app, logged_in, factory, member):
    """An edit of a running application is a draft; a plugin attached meanwhile applies live to what
    runs: the running release is the one that ran plus the chain, the draft stays newest (with it)."""
    from llmapp.services import applications

    model, other = factory.model(), factory.model()
    application = factory.application(member, model, name="live")
    with app.app_context():
        from llmapp.services import releases

        releases.history(db.session.get(Application, application.id))  # release 1
    running_at(app, application.id, 1)
    with app.app_context():
        applications.update(db.session.get(Application, application.id), {"name": "live", "model_id": other.id})
    logged_in.post("/plugins/new", data=plugin_form("system_prompt", name="tone", prompt="Be brief.", mode="prepend"))
    logged_in.post(
        f"/applications/{application.id}/plugins", data={"plugin_id": stored_plugin(app, "tone").id}, headers=HX
    )
    one, draft, live, newest = releases_of(app, application.id)
    assert draft.setup["model"]["id"] == other.id and draft.setup["plugins"] == []
    assert live.setup["model"]["id"] == model.id and [p["name"] for p in live.setup["plugins"]] == ["tone"]
    assert newest.setup["model"]["id"] == other.id and [p["name"] for p in newest.setup["plugins"]] == ["tone"]
    with app.app_context():
        row = db.session.get(Application, application.id)
        assert row.deployed_release == live.number == 3 and {r.release for r in row.replicas} == {3}


def test_a_rollback_goes_to_the_release_that_served_before_and_keeps_only_plugins_the_owner_may_attach(
    app, factory, member, admin
):
    from llmapp.models import ApplicationPlugin, Plugin
    from llmapp.services import applications, deployments, releases

    model = factory.model()
    application = factory.application(member, model, name="back")
    with app.app_context():
        shared = Plugin(name="admin-only", type="system_prompt", config={"prompt": "x"}, created_by_id=admin.id)
        db.session.add(shared)
        db.session.commit()
        db.session.add(ApplicationPlugin(application_id=application.id, plugin_id=shared.id, position=0, config={}))
        db.session.commit()
        releases.history(db.session.get(Application, application.id))  # release 1, with the plugin
        row = db.session.get(Application, application.id)
        applications.update(row, {"name": "back", "model_id": model.id, "timeout_s": 77})  # release 2
        applications.update(row, {"name": "back", "model_id": model.id, "timeout_s": 78})  # 3: never served
        releases.mark_served(application.id, 1)
        db.session.commit()
    running_at(app, application.id, 2)
    with app.app_context():
        row = db.session.get(Application, application.id)
        assert releases.served_before(row) == 1  # not 1 less than 2 by chance: 3 never served, 1 did
        deployments.rollback(row, None, None)
        row = db.session.get(Application, application.id)
        assert (row.rolling_to, row.config["timeout_s"]) == (4, releases.get(row, 1).setup["config"]["timeout_s"])
        # The member can't see the admin's unpublished plugin: the rollback leaves it out.
        assert (
            db.session.scalars(db.select(ApplicationPlugin).where(ApplicationPlugin.application_id == row.id)).all()
            == []
        )
        assert releases.get(row, 4).note == "Rollback to release 1"


def test_a_canary_needs_a_new_release_and_serving_replicas_to_promote_or_abort(app, factory, member):
    from llmapp.services import Conflict, FieldErrors, canaries, releases

    application = factory.application(factory.user(), factory.model(), name="bird")
    with app.app_context():
        releases.history(db.session.get(Application, application.id))
    running_at(app, application.id, 1)
    with app.app_context():
        row = db.session.get(Application, application.id)
        for share in (0, 100, "20", True):
            with pytest.raises(FieldErrors) as refused:
                canaries.start(row, share)
            assert "between 1 and 99" in refused.value.errors["share"][0]
        with pytest.raises(Conflict, match="Release 1 is the one serving"):
            canaries.start(row, 20)
        for end in (canaries.promote, canaries.abort):
            with pytest.raises(Conflict, match="no canary"):
                end(row)
        # A canary whose replicas are gone can't be promoted: the application would serve nothing.
        row.canary_release, row.canary_percent = 1, 20
        for replica in row.replicas:
            replica.status = "draining"
        db.session.commit()
        with pytest.raises(Conflict, match="no canary serving to promote"):
            canaries.promote(db.session.get(Application, application.id))
