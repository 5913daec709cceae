"""A running application takes changes to its plugin chain live: attach, detach, overrides and an edit
on the Plugins tab reach its server without a restart, and the reconcile publishes a chain Redis lost."""

import re

import openai

from conftest import (
    HX,
    SERVING_CONFIG,
    deploy,
    health_of,
    new_key,
    plugin_form,
    sse_events,
    stored_plugin,
    wait_for,
    wait_logged,
)
from llmapp import keyspace


def test_a_running_application_takes_chain_changes_live(app, client, auth, member, factory, tiny, workers):

    workers.start(1)
    auth.login(member)
    client.post("/plugins/new", data=plugin_form("system_prompt", name="style", **{"config-system_prompt": "Be kind."}))
    client.post(
        "/plugins/new", data=plugin_form(name="blocker", **{"config-keywords": "forbidden", "config-apply_to": "input"})
    )
    style, blocker = stored_plugin(app, "style"), stored_plugin(app, "blocker")
    application = factory.application(member, tiny, name="chained", config=dict(SERVING_CONFIG))
    base = f"/applications/{application.id}/plugins"
    client.post(base, data={"plugin_id": style.id}, headers=HX)  # before the deploy: it runs from the start
    running = deploy(client, app, application)
    assert running.status == "running", running.last_error
    assert [step["name"] for step in health_of(running)["plugins"]["chain"]] == ["style"]
    endpoint = openai.OpenAI(base_url=running.endpoint, api_key=new_key(app, application.id), max_retries=0)

    def prompt_tokens(text="hello"):
        reply = endpoint.completions.create(model="chained", prompt=text, max_tokens=1)
        return reply.usage.prompt_tokens

    def blocked(text="this is forbidden"):
        try:
            prompt_tokens(text)
        except openai.BadRequestError as e:
            return e.code == "content_filter"
        return False

    styled = prompt_tokens()
    wait_logged(app, application.id, "plugins style")
    section = client.post(base, data={"plugin_id": blocker.id}, headers=HX)  # live: no restart
    assert "Changes reach the running server within seconds" in section.text
    wait_for(blocked, 60, 0.2, "the blocker to act on the running server")
    client.post(f"{base}/{style.id}/detach", headers=HX)
    wait_for(lambda: prompt_tokens() < styled, 60, 0.2, "the detached system prompt to stop acting")
    # This application's override of the keywords…
    overrides = {"config-keywords": "verboten", "config-apply_to": "input"}
    assert client.post(f"{base}/{blocker.id}/overrides", data=overrides, headers=HX).status_code == 200
    wait_for(lambda: blocked("verboten") and not blocked(), 60, 0.2, "the override to reach the server")
    # …and an edit of the plugin on the Plugins tab (a setting not overridden) reach the running server.
    edit = plugin_form(name="blocker", **{"config-keywords": "forbidden", "config-apply_to": "output"})
    assert client.post(f"/plugins/{blocker.id}/edit", data=edit).status_code == 303
    wait_for(lambda: not blocked("verboten"), 60, 0.2, "the plugin's edit to reach the server")
    assert health_of(running)["status"] == "ready"
    wait_logged(app, application.id, "policy: blocker block input (keyword)")
    # Redis lost the chain (a restart without persistence): the server keeps the one it runs, and the
    # reconcile publishes it again.
    from llmapp import queues
    from llmapp.services import reconcile

    with app.app_context():
        connection, chain_key = queues.connection(), keyspace.plugin_chain(application.id)
        connection.delete(chain_key)

        def republished():
            reconcile.reconcile(queues.this_host())  # skips while a worker's reconcile runs
            return connection.hget(chain_key, "version")

        version = wait_for(republished, 60, 0.5, "the reconcile to publish the chain again").decode()
    assert version == health_of(running)["plugins"]["version"] and not blocked("verboten")
    # The playground says when a plugin masked the message before the model saw it (what kind, not what).
    masking = {"config-keywords": "verboten", "config-apply_to": "input", "config-action": "mask"}
    assert client.post(f"{base}/{blocker.id}/overrides", data=masking, headers=HX).status_code == 200

    def masked_in_the_playground():
        sent = client.post(
            f"/applications/{application.id}/playground",
            data={"message": "say verboten", "max_tokens": 2, "temperature": 0},
            headers=HX,
        )
        done = sse_events(client.get(re.search(r'sse-connect="([^"]+)"', sent.text).group(1)).text)[-1][1]
        notice = re.search(r"<p [^>]*data-input-masked>([^<]*)</p>", done)
        return notice and notice.group(1)

    notice = wait_for(masked_in_the_playground, 60, 0.5, "the playground to say the message was masked")
    assert notice == "A plugin masked your message before the model saw it: keyword."  # the kind, not the word
    client.post(f"/applications/{application.id}/stop", headers=HX)
