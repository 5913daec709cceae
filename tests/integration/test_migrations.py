"""Migrations run on databases with data in them, as an upgrade meets them: nothing is lost."""

import uuid

import flask_migrate
import pytest
from sqlalchemy import text

from conftest import make_config
from llmapp import create_app
from llmapp.extensions import db

NOW = "2026-12-01 10:00:00"


@pytest.fixture
def at_0011(tmp_path, redis_url):
    """A SQLite database at revision 0011 (one application running, with its variables, keys, releases
    and a plugin), as the embedded platform keeps one: the app's connections enforce foreign keys."""
    app = create_app(make_config(f"sqlite:///{tmp_path / 'old.db'}", redis_url))
    application_id = uuid.uuid4().hex
    with app.app_context():
        flask_migrate.upgrade(revision="0011")
        statements = [
            "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES (1, 'a@x.io', 'h', 1, :now)",
            "INSERT INTO registry_models (id, name, family, parameters_billions, precision, context_length, engine,"
            " source, created_at, updated_at, api_key_env) VALUES (1, 'm', '', 1, 'fp16', 2048, 'transformers', '/m',"
            " :now, :now, 'OPENAI_API_KEY')",
            "INSERT INTO applications (id, name, description, model_id, status, endpoint, config, resource_usage,"
            " created_by_id, created_at, updated_at, deploy_id, deploy_phases, restarts, process_host, process_pid,"
            " process_port, port, deployed_release) VALUES (:id, 'bot', '', 1, 'running', 'http://10.0.0.5:18001/v1',"
            " '{}', '{}', 1, :now, :now, 'd1', '[]', '[]', 'host-a', 4242, 18001, 18001, 2)",
            "INSERT INTO app_env_vars (application_id, position, name, value, is_secret) VALUES (:id, 0, 'A', 'b', 0)",
            "INSERT INTO api_keys (application_id, label, key_hash, prefix, created_at, purpose)"
            " VALUES (:id, 'k', 'hash', 'llm-', :now, 'user')",
            "INSERT INTO releases (application_id, number, created_at, note, setup) VALUES (:id, 1, :now, 'one', '{}')",
            "INSERT INTO releases (application_id, number, created_at, note, setup) VALUES (:id, 2, :now, 'two', '{}')",
            "INSERT INTO plugins (id, name, version, description, enabled, created_at, updated_at, type, config,"
            " published) VALUES (1, 'p', '', '', 1, :now, :now, 'system_prompt', '{}', 0)",
            "INSERT INTO application_plugins (application_id, plugin_id, position, config, enabled)"
            " VALUES (:id, 1, 0, '{}', 1)",
        ]
        with db.engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), {"id": application_id, "now": NOW})
    return app, application_id


def counts(connection, application_id) -> dict:
    tables = ("app_env_vars", "api_keys", "releases", "application_plugins")
    return {
        table: connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE application_id = :id"), {"id": application_id}
        ).scalar()  # noqa: E501
        for table in tables
    }


def test_upgrading_a_populated_database_keeps_every_row_and_makes_the_running_server_a_replica(at_0011):
    app, application_id = at_0011
    with app.app_context():
        with db.engine.connect() as connection:
            before = counts(connection, application_id)
        flask_migrate.upgrade()
        with db.engine.connect() as connection:
            assert counts(connection, application_id) == before == {
                "app_env_vars": 1, "api_keys": 1, "releases": 2, "application_plugins": 1,
            }  # fmt: skip
            replica = connection.execute(text("SELECT * FROM replicas")).mappings().one()
            assert (replica["host"], replica["address"], replica["pid"], replica["port"]) == (
                "host-a",
                "10.0.0.5",
                4242,
                18001,
            )
            assert (replica["release"], replica["status"], replica["deploy_id"]) == (2, "ready", "d1")
            assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
            # The index that keeps names unique in any case is there again after SQLite rebuilt the table.
            indexes = {row[1] for row in connection.execute(text("PRAGMA index_list(applications)"))}
            assert "uq_applications_owner_lower_name" in indexes
        flask_migrate.downgrade(revision="0011")  # and back: the server is the application's again
        with db.engine.connect() as connection:
            row = connection.execute(text("SELECT process_host, process_pid, process_port FROM applications")).one()
            assert tuple(row) == ("host-a", 4242, 18001)
            assert counts(connection, application_id) == before
