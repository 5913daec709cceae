"""One set of rules below the adapters: the same bad input through the page form, the CLI and the REST API
gets the same message at the same field, because the services alone judge it."""

import re

from conftest import HX
from llmapp.extensions import db
from llmapp.models import Application

BAD = {
    "max_concurrency": ("0", "Must be between 1 and 1024."),
    "cache_size": ("100001", "Must be between 0 and 100000."),
    "restart_policy": ("sometimes", "Choose one of: on-failure, never."),
}
BAD_ENV = ("1BAD", "Use letters, digits and _, not starting with a digit.")


def form_errors(html: str) -> dict[str, str]:
    """Each field's error as the page shows it (id="<field>-error")."""
    return {name: message for name, message in re.findall(r'id="([\w-]+)-error">([^<]+)<', html)}


def test_the_form_the_cli_and_the_api_give_the_services_messages_at_the_same_fields(
    logged_in, app, runner, factory, member
):
    model = factory.model(name="Qwen")
    from test_applications import form_data

    data = form_data(model, **{k: v for k, (v, _) in BAD.items()}, **{"env-0-name": BAD_ENV[0], "env-0-value": "x"})
    page = logged_in.post("/applications/new", data=data, headers=HX)
    assert page.status_code == 422
    shown = form_errors(page.text)
    for field, (_, message) in BAD.items():
        assert shown.get(field) == message, (field, shown)
    assert BAD_ENV[1] in page.text

    settings = [arg for field, (value, _) in BAD.items() for arg in ("--set", f"{field}={value}")]
    cli = runner.invoke(
        args=["apps", "create", "support-bot", "--owner", member.email, "--model", "Qwen", *settings,
              "--env", f"{BAD_ENV[0]}=x"]
    )  # fmt: skip
    assert cli.exit_code == 1
    printed = dict(line.split(": ", 1) for line in cli.output.strip().splitlines())
    for field, (_, message) in BAD.items():
        assert printed[field] == message
    assert printed["env.0.name"] == BAD_ENV[1]

    from conftest import bearer, token_for

    body = {
        "name": "support-bot",
        "model_id": model.id,
        **{field: int(value) if value.isdigit() else value for field, (value, _) in BAD.items()},
        "timeout_s": 60,
        "batch_size": 2,
        "max_restarts": 3,
        "env": [{"name": BAD_ENV[0], "value": "x"}],
    }
    api = logged_in.post("/api/v1/applications", json=body, headers=bearer(token_for(app, member)))
    assert api.status_code == 422
    for field, (_, message) in BAD.items():
        assert api.json["errors"][field] == [message]
    assert api.json["errors"]["env.0.name"] == [BAD_ENV[1]]
    unknown = runner.invoke(args=["apps", "create", "x", "--owner", member.email, "--model", "Nope"])
    assert "model_id: Choose a model from the registry." in unknown.output
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Application)) == 0
    made = runner.invoke(
        args=["apps", "create", "support-bot", "--owner", member.email, "--model", "Qwen", "--set", "timeout_s=120",
              "--secret", "API_KEY=sk-1", "--json"]
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    with app.app_context():
        application = db.session.scalar(db.select(Application))
        assert application.config["timeout_s"] == 120 and [v.is_secret for v in application.env_vars] == [True]
