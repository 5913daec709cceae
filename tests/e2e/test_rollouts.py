"""Releases served for real: replicas behind the gateway, rolling redeploys and rollbacks under a steady
load (zero failed requests, each client seeing the release change once per roll-out), a release that
can't start leaving the old one serving, and a replica killed with -9 under load. Real workers, app
servers and gateway; the official openai client through the gateway; the CLI as an operator types it."""

import json
import shutil
import signal
import threading
from collections import Counter

import openai
import psutil

from conftest import SERVING_CONFIG, log_text, new_key, row, wait_for, wait_logged
from llmapp.extensions import db
from llmapp.models import Application
from llmapp.services import applications


class Load:
    """Clients calling the gateway back to back, each in its own thread, plain and streamed requests
    in turn; what each one got, in order: (release, error)."""

    def __init__(self, base_url: str, key: str, model: str, clients: int = 4):
        self.model, self.stop = model, threading.Event()
        self.results: list[list[tuple[int | None, str | None]]] = [[] for _ in range(clients)]
        self.threads = [
            threading.Thread(
                target=self._run,
                args=(i, openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)),
                daemon=True,
            )
            for i in range(clients)
        ]

    def _call(self, client: openai.OpenAI, streamed: bool) -> int:
        raw = client.completions.with_raw_response.create(
            model=self.model, prompt="Hello", max_tokens=6, temperature=0, stream=streamed
        )
        answer = raw.parse()
        if streamed:
            chunks = list(answer)  # an error event mid-way raises here
            assert chunks, "a stream with no chunk"
        else:
            assert answer.choices[0].text is not None
        return int(raw.headers["X-Llmapp-Release"])

    def _run(self, i: int, client: openai.OpenAI) -> None:
        turn = i
        while not self.stop.is_set():
            turn += 1
            try:
                self.results[i].append((self._call(client, streamed=turn % 2 == 0), None))
            except Exception as e:  # noqa: BLE001 - every failure is counted, whatever its kind
                self.results[i].append((None, f"{type(e).__name__}: {e}"))

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)

    def count(self) -> int:
        return sum(len(r) for r in self.results)

    def failures(self) -> list[str]:
        return [error for results in self.results for _, error in results if error]

    def every_client_saw(self, release: int) -> bool:
        return all(any(r == release for r, _ in results) for results in self.results)

    def releases_in_order(self) -> list[list[int]]:
        """Each client's releases, repeats folded: [1, 3, 4] when it saw 1, then 3, then 4."""
        folded = []
        for results in self.results:
            seen = []
            for release, _ in results:
                if release is not None and (not seen or seen[-1] != release):
                    seen.append(release)
            folded.append(seen)
        return folded


def cli(runner, *args) -> tuple[int, dict | list | str]:
    result = runner.invoke(args=["apps", *args])
    try:
        return result.exit_code, json.loads(result.output.strip().splitlines()[0])
    except (ValueError, IndexError):
        return result.exit_code, result.output


def current_release(runner, name: str) -> int:
    _, listed = cli(runner, "releases", name, "--json")
    return next(r["number"] for r in listed if r["current"])


def deployed_replicas(app, application_id) -> list:
    with app.app_context():
        return [r for r in db.session.get(Application, application_id).replicas if r.status == "ready"]


def test_rolling_redeploys_and_rollback_drop_no_request(
    app, runner, member, factory, tiny, tiny_model_dir, tmp_path, workers, gateway
):
    workers.start(2)
    application = factory.application(member, tiny, name="steady", config={**SERVING_CONFIG, "replicas": 2})
    code, deployed = cli(runner, "deploy", "steady", "--wait", "--json")
    assert code == 0 and deployed["status"] == "running" and deployed["release"] == 1, deployed
    assert len(deployed_replicas(app, application.id)) == 2  # two servers, two ports
    assert len({r.port for r in deployed_replicas(app, application.id)}) == 2
    key = new_key(app, application.id)

    # A model whose directory goes away after it was saved: the release that uses it can't start.
    copy = tmp_path / "gone-model"
    shutil.copytree(tiny_model_dir, copy)
    gone = factory.model(
        name="gone-gpt2", engine="transformers", source=str(copy), precision="fp32", parameters_billions=0.0004
    )  # declared as small as it is: placed, then its deploy finds it gone

    with Load(gateway, key, "steady") as load:
        wait_for(lambda: load.every_client_saw(1), 120, 0.2, "every client to be served by release 1")

        with app.app_context():
            saved = db.session.get(Application, application.id)
            applications.update(saved, {"name": "steady", "model_id": gone.id, "note": "another model"})
        shutil.rmtree(copy)
        result = runner.invoke(args=["apps", "deploy", "steady", "--wait", "--json"])
        assert result.exit_code == 1 and "Release 2 does not serve" in result.output, result.output
        failed = row(app, application.id)
        assert (failed.status, failed.deployed_release, failed.rolling_to) == ("running", 1, None)
        assert "gone-model" in failed.last_error, failed.last_error
        wait_logged(app, application.id, "the roll-out failed; release 1 keeps serving")

        # A draft saved while it runs serves nothing until it is deployed: then rolled out.
        code, edited = cli(runner, "edit", "steady", "--set", "timeout_s=45", "--note", "longer timeout", "--json")
        assert code == 0 and edited["release"] == 3, edited
        with app.app_context():  # the edit keeps the gone model: put the good one back in the same release
            saved = db.session.get(Application, application.id)
            applications.update(saved, {"name": "steady", "model_id": tiny.id, "note": "the model back"})
        assert current_release(runner, "steady") == 1
        code, rolled = cli(runner, "deploy", "steady", "--wait", "--json")
        assert code == 0 and rolled["release"] == 4 and rolled["rolling_to"] is None, rolled
        assert current_release(runner, "steady") == 4
        wait_for(lambda: load.every_client_saw(4), 120, 0.2, "every client to be served by release 4")

        code, rolled_back = cli(runner, "rollback", "steady", "--to", "1", "--wait", "--json")
        assert code == 0 and rolled_back["release"] == 5, (rolled_back, log_text(app, application.id)[-3000:])
        wait_for(lambda: load.every_client_saw(5), 120, 0.2, "every client to be served by release 5")
        served = load.count()
        wait_for(lambda: load.count() > served + 8, 120, 0.2, "more requests after the rollback")

    assert load.failures() == [], load.failures()[:5]
    for seen in load.releases_in_order():
        assert seen == [1, 4, 5], load.releases_in_order()  # each roll-out switches a client once
    with app.app_context():
        restored = db.session.get(Application, application.id)
        assert restored.config["timeout_s"] == SERVING_CONFIG["timeout_s"]  # release 1's setup again
    assert len(deployed_replicas(app, application.id)) == 2
    assert {r.release for r in deployed_replicas(app, application.id)} == {5}
    text = log_text(app, application.id)
    assert "rolling out release 4" in text and "release 4 serves (2 replicas)" in text


def test_a_replica_killed_under_load_fails_only_what_it_had(app, runner, member, factory, tiny, workers, gateway):
    workers.start(2)
    application = factory.application(
        member, tiny, name="sturdy", config={**SERVING_CONFIG, "replicas": 2, "restart_policy": "on-failure"}
    )
    code, deployed = cli(runner, "deploy", "sturdy", "--wait", "--json")
    assert code == 0 and deployed["status"] == "running", deployed
    key = new_key(app, application.id)
    victim, survivor = deployed_replicas(app, application.id)

    with Load(gateway, key, "sturdy", clients=4) as load:
        wait_for(lambda: load.count() >= 8, 120, 0.2, "requests through the gateway")
        psutil.Process(victim.pid).send_signal(signal.SIGKILL)
        before = load.count()
        wait_for(lambda: load.count() >= before + 20, 180, 0.2, "requests after the kill")
        # The reconcile replaces it; the application never stops running.
        wait_for(
            lambda: (
                len(ready := deployed_replicas(app, application.id)) == 2 and victim.id not in {r.id for r in ready}
            ),
            180,
            0.5,
            "a replacement replica",
        )
        replaced = load.count()
        wait_for(lambda: load.count() >= replaced + 8, 120, 0.2, "requests after the replacement")

    # Only requests in flight on the killed replica fail: at most one per client, each ended by an error
    # (a stream mid-way by its error event), none by the client's time-out.
    assert len(load.failures()) <= 4, load.failures()
    assert not any("Timeout" in failure for failure in load.failures()), load.failures()
    assert row(app, application.id).status == "running"
    assert any(r.id == survivor.id for r in deployed_replicas(app, application.id))
    assert f"replica {victim.id[:8]}" in log_text(app, application.id)


def release_of(api: openai.OpenAI, model: str) -> int:
    raw = api.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=1, temperature=0)
    raw.parse()
    return int(raw.headers["X-Llmapp-Release"])


def test_a_canary_takes_its_share_and_is_aborted_or_promoted(app, runner, member, factory, tiny, workers, gateway):
    from llmapp.services import metrics

    workers.start(2)
    application = factory.application(member, tiny, name="bird", config=dict(SERVING_CONFIG))
    code, deployed = cli(runner, "deploy", "bird", "--wait", "--json")
    assert code == 0 and deployed["release"] == 1, deployed
    key = new_key(app, application.id)
    api = openai.OpenAI(base_url=gateway, api_key=key, max_retries=0, timeout=120)
    code, edited = cli(runner, "edit", "bird", "--set", "timeout_s=44", "--note", "to try", "--json")
    assert code == 0 and edited["release"] == 2

    code, started = cli(runner, "canary", "bird", "--share", "20", "--wait", "--json")
    assert code == 0 and (started["release"], started["canary_release"], started["canary_percent"]) == (1, 2, 20)
    answered = Counter(release_of(api, "bird") for _ in range(500))
    # Binomial(500, 0.2): 100 expected, standard deviation 8.9; these bounds are 4.5 of them either side.
    assert answered[1] + answered[2] == 500 and 60 <= answered[2] <= 140, answered

    # The Monitoring pane's figures by release are the gateway's own count of what it answered.
    def by_release():
        with app.app_context():
            rows = metrics.report(db.session.get(Application, application.id), "1h")["releases"]
        return {r["release"]: r["requests"] for r in rows}

    wait_for(lambda: by_release() == dict(answered), 60, 0.5, f"the per-release figures to be {dict(answered)}")
    page_rows = by_release()
    assert set(page_rows) == {1, 2}

    # Abort: once the gateway has the route (announced at once), the canary gets no request at all.
    code, aborted = cli(runner, "canary", "bird", "--abort", "--json")
    assert code == 0 and aborted["canary_release"] is None and aborted["release"] == 1
    wait_for(lambda: all(release_of(api, "bird") == 1 for _ in range(10)), 60, 0.1, "release 1 only")
    assert Counter(release_of(api, "bird") for _ in range(100)) == {1: 100}
    wait_for(lambda: {r.release for r in row(app, application.id).replicas} == {1}, 60, 0.2, "the canary stopped")

    # Again, then promoted: release 2 serves everything; release 1's server stops.
    code, again = cli(runner, "canary", "bird", "--share", "50", "--wait", "--json")
    assert code == 0 and again["canary_release"] == 2, again
    code, promoted = cli(runner, "canary", "bird", "--promote", "--json")
    assert code == 0 and (promoted["release"], promoted["canary_release"]) == (2, None), promoted
    wait_for(lambda: all(release_of(api, "bird") == 2 for _ in range(10)), 60, 0.1, "release 2 only")
    wait_for(lambda: {r.release for r in row(app, application.id).replicas} == {2}, 60, 0.2, "release 1 stopped")
    assert current_release(runner, "bird") == 2
    # A canary needs a release that is not the one serving.
    code, refused = cli(runner, "canary", "bird", "--share", "10", "--json")
    assert code == 1 and "Release 2 is the one serving" in refused, refused


def test_a_stop_during_a_roll_out_leaves_no_server_behind(app, runner, member, factory, tiny, workers):
    """The roll-out's job learns it was ended (its servers were starting when the stop came): every
    server of the application is gone, and it deploys again at once."""
    from conftest import server_processes

    workers.start(2)
    application = factory.application(member, tiny, name="halted", config=dict(SERVING_CONFIG))
    code, deployed = cli(runner, "deploy", "halted", "--wait", "--json")
    assert code == 0 and deployed["status"] == "running", deployed
    code, rolling = cli(runner, "deploy", "halted", "--json")  # a roll-out begins
    assert code == 0 and rolling["rolling_to"] == 1, rolling
    wait_for(
        lambda: any(r.status == "starting" and r.pid for r in row(app, application.id).replicas),
        60,
        0.05,
        "the roll-out's server to start",
    )
    code, stopped = cli(runner, "stop", "halted", "--wait", "--json")
    assert code == 0 and (stopped["status"], stopped["rolling_to"]) == ("stopped", None), stopped
    wait_for(lambda: server_processes(application.id) == [], 60, 0.2, "no server of it left")
    code, again = cli(runner, "deploy", "halted", "--wait", "--json")
    assert code == 0 and again["status"] == "running", again
    assert len(server_processes(application.id)) == 1 and len(row(app, application.id).replicas) == 1
