"""Server time of the applications list with 10,000 applications (not a test; see bench/RESULTS.md).

    .venv/bin/python bench/list_page.py                      # SQLite in a temporary file
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/list_page.py

It builds the schema with the real migrations, inserts N applications over 50 owners and 10 models,
then times the list as an admin (all applications) and as a member, as the page and as the htmx
fragment, with a search, a status filter and a deep page. WARNING: on PostgreSQL it empties the database.
"""

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate  # noqa: E402
from sqlalchemy import event, insert, text  # noqa: E402

from llmapp import create_app  # noqa: E402
from llmapp.extensions import db  # noqa: E402
from llmapp.models import Application, RegistryModel, User, utcnow  # noqa: E402

N = int(os.environ.get("N", 10_000))
REPEAT = 30


def main():
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    app = create_app(
        {
            "LLMAPP_ENV": "testing",
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": url,
            "WTF_CSRF_ENABLED": False,
            "RATELIMIT_ENABLED": False,
        }
    )
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        flask_migrate.upgrade()
        users = []
        for i in range(50):
            user = User(email=f"user{i}@example.com", is_admin=(i == 0))
            user.set_password("password123")
            users.append(user)
        models = [
            RegistryModel(
                name=f"model-{i}",
                parameters_billions=7,
                precision="bf16",
                context_length=4096,
                engine="transformers",
                source="/m",
            )
            for i in range(10)
        ]
        db.session.add_all(users + models)
        db.session.commit()
        statuses = ["stopped", "running", "failed", "stopped", "deploying"]
        config = {"max_concurrency": 8, "timeout_s": 60, "log_level": "INFO", "cache_size": 128, "batch_size": 4}
        now = utcnow()
        rows = [
            dict(
                id=uuid.uuid4(),
                name=f"app-{i:05d}",
                description="",
                model_id=models[i % 10].id,
                status=statuses[i % 5],
                config=config,
                resource_usage={},
                created_by_id=users[i % 50].id,
                created_at=now,
                updated_at=now,
            )
            for i in range(N)
        ]
        db.session.execute(insert(Application), rows)
        db.session.commit()
        dialect = db.engine.dialect.name
        admin_email, member_email = users[0].email, users[1].email

    cases = [
        ("admin, page 1 (full page)", admin_email, "/applications/", {}),
        ("admin, page 1 (htmx fragment)", admin_email, "/applications/", {"HX-Request": "true"}),
        ("admin, search 'app-0999'", admin_email, "/applications/?q=app-0999", {"HX-Request": "true"}),
        ("admin, status=failed", admin_email, "/applications/?status=failed", {"HX-Request": "true"}),
        ("admin, page 300", admin_email, "/applications/?page=300", {"HX-Request": "true"}),
        ("member, page 1 (200 of 10,000 are theirs)", member_email, "/applications/", {}),
    ]
    print(f"{N} applications on {dialect}; median / p95 of {REPEAT} requests, server time (Flask test client)")
    for label, email, path, headers in cases:
        client = app.test_client()
        client.post("/login", data={"email": email, "password": "password123"})
        queries = []
        with app.app_context():
            listener = lambda *a, queries=queries: queries.append(1)  # noqa: E731
            event.listen(db.engine, "before_cursor_execute", listener)
            assert client.get(path, headers=headers).status_code == 200
            event.remove(db.engine, "before_cursor_execute", listener)
        timings = []
        for _ in range(REPEAT):
            start = time.perf_counter()
            response = client.get(path, headers=headers)
            timings.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
        timings.sort()
        median, p95 = statistics.median(timings), timings[int(REPEAT * 0.95) - 1]
        print(f"  {label:45s} median {median:6.1f} ms   p95 {p95:6.1f} ms   {len(queries)} SQL statements")


if __name__ == "__main__":
    main()
