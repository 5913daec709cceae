"""Demo data (the seed's VUE_APP_USE_MOCK_DATA): a demo admin, registry models, applications.

Everything is looked up before it is created, so seeding twice creates nothing twice. The tiny GPT-2
behind `hello-tiny` is built on this machine on first run (a few seconds; nothing is downloaded); the
other models are registry entries that show recommendations for their sizes (their directories are
not on this machine, so deploying them fails with that reason).
"""

from pathlib import Path

from flask import current_app
from sqlalchemy import select

from .. import engines
from ..extensions import db
from ..models import Plugin, RegistryModel
from ..runtime import plugins as plugin_types
from . import OPERATOR, applications, plugin_documents, plugins, users

DEMO_EMAIL = "demo@llmapp.local"
DEMO_PASSWORD = "demo-password"

MODELS = [
    dict(
        name="Qwen2.5-0.5B-Instruct",
        family="qwen2",
        parameters_billions=0.5,
        precision="bf16",
        context_length=32768,
        engine="transformers",
        source="/models/Qwen2.5-0.5B-Instruct",
    ),
    dict(
        name="Llama-3.1-8B-Instruct",
        family="llama",
        parameters_billions=8,
        precision="bf16",
        context_length=131072,
        engine="transformers",
        source="/models/Llama-3.1-8B-Instruct",
    ),
    dict(
        name="Mistral-7B-Instruct-int4",
        family="mistral",
        parameters_billions=7.2,
        precision="int4",
        context_length=32768,
        engine="transformers",
        source="/models/Mistral-7B-Instruct-v0.3-AWQ",
    ),
    dict(
        name="Llama-3.1-70B (vLLM)",
        family="llama",
        parameters_billions=70,
        precision="bf16",
        context_length=8192,
        engine="openai",
        source="vLLM cluster",
        base_url="http://vllm.internal:8000/v1",
        upstream_model="meta-llama/Llama-3.1-70B-Instruct",
        api_key_env="VLLM_API_KEY",
    ),
]

TINY_MODEL = "tiny-gpt2"
TINY_GGUF = "tiny-gpt2-gguf"
APPLICATIONS = [
    ("hello-tiny", TINY_MODEL, "A 2-layer GPT-2 built on this machine: deploy it and call it within a minute."),
    (
        "hello-gguf",
        TINY_GGUF,
        "The same GPT-2 as a GGUF file, served by llama.cpp: run `flask engines install llama.cpp` first.",
    ),
    ("support-bot", "Qwen2.5-0.5B-Instruct", "Answers customer questions from the help centre."),
    ("code-review", "Llama-3.1-8B-Instruct", "Reviews pull requests and suggests changes."),
    ("summarizer", "Mistral-7B-Instruct-int4", "Summarises long documents into five bullet points."),
    ("analyst", "Llama-3.1-70B (vLLM)", "Answers questions about sales data, through the shared vLLM."),
]


def demo_environment(model: RegistryModel) -> list[dict]:
    """Variables that do something: those the model's engine reads (an upstream's key under the name the
    registry gives; the CPU threads torch uses and no download attempts)."""
    variables = engines.kind(model.engine).example_variables(model)
    return [{"name": name, "value": value, "secret": secret} for name, value, secret in variables]


PLUGINS = [
    (
        "house-style",
        "system_prompt",
        "Answers briefly and politely.",
        {"system_prompt": "You are a helpful, brief assistant."},
    ),
    (
        "no-secrets",
        "content_filter",
        "Masks words that should never leave.",
        {"keywords": ["password", "api key"], "action": "mask"},
    ),
    ("redact-pii", "pii_redaction", "E-mail addresses, phone numbers and resident IDs, masked both ways.", {}),
    ("help-centre", "knowledge_retrieval", "Passages of the help centre as context.", {"top_k": 3}),
    (
        "audit-log",
        "webhook_audit",
        "Summaries to the audit service.",
        {"url": "http://audit.internal/hook", "secret": "demo-signing-secret-0001"},
    ),
]


# Which demo applications run which plugins, in order: a newcomer deploys hello-tiny and sees the system
# prompt and the redaction act (the prompt grows, an e-mail address in a question is masked in the log).
CHAINS = {
    "hello-tiny": ["house-style", "redact-pii"],
    "support-bot": ["redact-pii", "help-centre", "no-secrets"],
    "analyst": ["redact-pii", "audit-log"],
}

HELP_CENTRE = """# Resetting a password

Open Settings, then Security, and choose "Reset password". A link valid for 30 minutes is sent to the
account's e-mail address. Administrators can also reset a member's password from the Users page.

# Invoices and billing

Invoices are issued on the first working day of each month and can be downloaded as PDF from Billing.
Payment is due within 30 days. To change the billing address, edit the organisation's profile.

# Exporting data

Every project can be exported as a ZIP archive of CSV files from Project settings, Export. Exports of
more than 1 GB are prepared in the background and a download link is e-mailed when ready.

# Support hours

The support team answers from 9:00 to 18:00 (UTC+8), Monday to Friday. Urgent incidents on paid plans
are handled around the clock through the status page.
"""


def seed() -> dict:
    """Create what is missing of the demo data; return what was created."""
    created = {"users": 0, "models": 0, "applications": 0, "plugins": 0}
    admin = users.find_by_email(DEMO_EMAIL)
    if admin is None:
        admin = users.create_user(DEMO_EMAIL, DEMO_PASSWORD, admin=True, acting=OPERATOR)
        created["users"] += 1
    models = {}
    # Beside instance/, not in it: instance/ is the platform's alone, and servers run as another account.
    tiny = Path(current_app.config.get("MODELS_DIR") or Path(current_app.instance_path).parent / "models") / TINY_MODEL
    if not (tiny / "config.json").exists():
        from ..runtime.tiny_model import build_tiny_model

        build_tiny_model(tiny)  # random weights, offline: junk text, real serving
    tiny_spec = dict(
        name=TINY_MODEL,
        family="gpt2",
        parameters_billions=0.0004,
        precision="fp32",
        context_length=8192,
        engine="transformers",
        source=str(tiny),
    )
    gguf = tiny.with_name(f"{TINY_MODEL}.gguf")
    if not gguf.exists():
        from ..runtime.tiny_gguf import build_tiny_gguf

        build_tiny_gguf(gguf, tiny)  # the same weights, written with the gguf package: offline
    gguf_spec = {
        **tiny_spec,
        "name": TINY_GGUF,
        "engine": "llama.cpp",
        "source": str(gguf),
        **engines.detect(str(gguf)).as_fields(),
    }
    for spec in [tiny_spec, gguf_spec, *MODELS]:
        model = db.session.scalar(select(RegistryModel).where(RegistryModel.name == spec["name"]))
        if model is None:
            model = RegistryModel(**spec)
            db.session.add(model)
            created["models"] += 1
        models[spec["name"]] = model
    db.session.commit()
    new_applications = {}
    for name, model_name, description in APPLICATIONS:
        if applications.name_taken(admin.id, name):
            continue
        model = models[model_name]
        new_applications[name] = applications.create(  # the serving fields: the model's recommendation
            admin, dict(name=name, model_id=model.id, description=description, env=demo_environment(model))
        )
        created["applications"] += 1

    def demo_plugin(name: str) -> Plugin | None:
        return db.session.scalar(select(Plugin).where(Plugin.created_by_id == admin.id, Plugin.name == name))

    for name, type_name, description, config in PLUGINS:
        if demo_plugin(name) is None:
            plugins.create(
                admin,
                {
                    "name": name,
                    "type": type_name,
                    "description": description,
                    "version": "1.0",
                    "config": {**plugin_types.defaults(type_name), **config},
                    "published": True,
                },
            )
            created["plugins"] += 1
    help_centre = demo_plugin("help-centre")
    if help_centre is not None and not help_centre.documents:
        plugin_documents.add_document(help_centre, admin, "help-centre.md", HELP_CENTRE.encode())
    for app_name, plugin_names in CHAINS.items():
        application = new_applications.get(app_name)
        if application is None:
            continue  # made by an earlier seed: its chain is its owner's business now
        for plugin_name in plugin_names:
            if (plugin := demo_plugin(plugin_name)) is not None:
                plugins.attach(application, admin, plugin.id)
    return created
