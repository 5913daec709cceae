import re

from llmapp.extensions import db
from llmapp.models import RegistryModel

HX = {"HX-Request": "true"}


def model_form(**overrides):
    data = {
        "name": "Qwen2.5-0.5B",
        "family": "qwen2",
        "parameters_billions": "0.5",
        "precision": "bf16",
        "context_length": "32768",
        "engine": "transformers",
        "source": "/models/qwen",
        "base_url": "",
        "upstream_model": "",
    }
    data.update(overrides)
    return data


def models(app):
    with app.app_context():
        return db.session.scalars(db.select(RegistryModel).order_by(RegistryModel.name)).all()


def test_admin_adds_edits_and_removes_a_model(client, auth, admin, app, tiny_model_dir):
    auth.login(admin)
    assert client.get("/models/new").status_code == 200
    response = client.post("/models/new", data=model_form(source=tiny_model_dir))
    assert response.status_code == 303
    (model,) = models(app)
    assert (model.name, model.parameters_billions, model.precision, model.engine) == (
        "Qwen2.5-0.5B",
        0.5,
        "bf16",
        "transformers",
    )
    listing = client.get("/models/").text
    assert "Model “Qwen2.5-0.5B” registered." in listing and "32,768" in listing and tiny_model_dir in listing
    assert client.get(f"/models/{model.id}/edit").status_code == 200
    client.post(
        f"/models/{model.id}/edit",
        data=model_form(name="Qwen2.5-0.5B-Instruct", precision="int8", source=tiny_model_dir),
    )
    (model,) = models(app)
    assert (model.name, model.precision) == ("Qwen2.5-0.5B-Instruct", "int8")
    response = client.delete(f"/models/{model.id}/delete", headers=HX)
    assert response.headers["HX-Redirect"] == "/models/"
    assert models(app) == []
    assert "Model “Qwen2.5-0.5B-Instruct” removed." in client.get("/models/").text


def test_openai_engine_needs_an_upstream(client, auth, admin, app):
    auth.login(admin)
    response = client.post("/models/new", data=model_form(engine="openai", source="", base_url="ftp://x"), headers=HX)
    assert response.status_code == 422
    assert (
        "must start with http:// or https://" in response.text
        and "Give the model name the upstream serves." in response.text
    )
    response = client.post(
        "/models/new",
        data=model_form(
            engine="openai", source="", base_url="http://vllm:8000/v1", upstream_model="meta-llama/Llama-3.1-8B"
        ),
    )
    assert response.status_code == 303
    (model,) = models(app)
    assert (model.base_url, model.upstream_model) == ("http://vllm:8000/v1", "meta-llama/Llama-3.1-8B")
    assert model.api_key_env == "OPENAI_API_KEY"  # the default, shown and editable in the form
    assert 'value="OPENAI_API_KEY"' in client.get(f"/models/{model.id}/edit").text
    bad = client.post(f"/models/{model.id}/edit", data=model_form(engine="openai", api_key_env="1-bad"), headers=HX)
    assert bad.status_code == 422 and "An environment variable name" in bad.text
    # A variable members may not set can't be the one that carries the upstream's key either.
    data = model_form(engine="openai", base_url="http://vllm:8000/v1", upstream_model="m", api_key_env="LLMAPP_KEY")
    refused = client.post(f"/models/{model.id}/edit", data=data, headers=HX)
    assert refused.status_code == 422 and "LLMAPP_KEY can&#39;t be set for an application" in refused.text
    client.post(
        f"/models/{model.id}/edit",
        data=model_form(
            engine="openai", base_url="http://vllm:8000/v1", upstream_model="m", api_key_env="VLLM_API_KEY"
        ),
    )
    assert models(app)[0].api_key_env == "VLLM_API_KEY"


def test_validation_keeps_input(client, auth, admin, app):
    auth.login(admin)
    response = client.post(
        "/models/new", data=model_form(parameters_billions="-1", context_length="x", source="", precision="fp8")
    )
    assert response.status_code == 422
    text = response.text
    assert "Between 0.000001 and 10,000." in text and "Not a valid integer value." in text
    assert "Give the path of a local Hugging Face model directory." in text
    assert "Choose one of: fp32, bf16, fp16, int8, int4." in text
    assert 'value="Qwen2.5-0.5B"' in text
    assert models(app) == []


def test_names_are_unique(client, auth, admin, factory):
    factory.model(name="Llama")
    auth.login(admin)
    response = client.post("/models/new", data=model_form(name="llama"))
    assert response.status_code == 422 and "A model named “llama” is already registered." in response.text


def test_a_model_in_use_cannot_be_removed(client, auth, admin, factory, app):
    model = factory.model(name="busy-model")
    factory.application(admin, model)
    auth.login(admin)
    response = client.post(f"/models/{model.id}/delete", follow_redirects=True)
    assert "“busy-model” is used by 1 application; change or delete those applications first." in response.text
    assert len(models(app)) == 1


def test_members_see_the_registry_but_cannot_change_it(logged_in, factory, app):
    model = factory.model(name="visible-model")
    text = logged_in.get("/models/").text
    assert "visible-model" in text and "+ Add model" not in text
    assert logged_in.get("/models/new").status_code == 403
    assert logged_in.post("/models/new", data=model_form()).status_code == 403
    assert logged_in.post(f"/models/{model.id}/edit", data=model_form()).status_code == 403
    assert logged_in.post(f"/models/{model.id}/delete").status_code == 403
    assert logged_in.post("/models/detect", data=model_form()).status_code == 403
    assert [m.name for m in models(app)] == ["visible-model"]


def test_unknown_model_is_404(client, auth, admin):
    auth.login(admin)
    assert client.get("/models/4242/edit").status_code == 404


def test_an_upstreams_base_url_is_checked_for_its_form(client, auth, admin, app):
    auth.login(admin)
    for url, words in (
        ("http://user:secret@vllm:8000/v1", "user name or password"),
        ("http://vllm:8000/v1?key=1", "query"),
        ("http://vllm:8000/v1#top", "fragment"),
        ("http://vl lm:8000/v1", "spaces"),
        ("http://vllm:8000/v1\x1b[2J", "control characters"),
        ("http:///v1", "needs a host"),
        ("http://vllm:99999/v1", "Not a valid URL"),
    ):
        form = model_form(engine="openai", source="", base_url=url, upstream_model="m")
        response = client.post("/models/new", data=form, headers=HX)
        assert response.status_code == 422 and words in response.text, url
    assert models(app) == []
    # Only its form: an admin's upstream may be on this host or a private network.
    private = model_form(engine="openai", source="", base_url="http://10.0.0.5:8000/v1", upstream_model="m")
    assert client.post("/models/new", data=private).status_code == 303


def test_the_registry_form_detects_and_refuses_at_once(client, auth, admin, app, tiny_model_dir, tmp_path):
    auth.login(admin)
    form = model_form(source=tiny_model_dir, family="", context_length="")
    filled = client.post("/models/detect", data=form, headers=HX)
    assert filled.status_code == 200 and "data-detected" in filled.text
    assert re.search(r'name="family"[^>]*value="gpt2"', filled.text) and 'value="8192"' in filled.text
    assert "Check them, then save." in filled.text
    # Detection only fills the form: nothing is registered until the admin saves.
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(RegistryModel)) == 0

    refused = client.post("/models/detect", data=model_form(source=str(tmp_path)), headers=HX)
    assert "has no config.json" in refused.text and "data-detected" not in refused.text
    saved = client.post("/models/new", data=model_form(source=str(tmp_path / "nowhere")), headers=HX)
    assert saved.status_code == 422 and "does not exist on this host" in saved.text
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(RegistryModel)) == 0
