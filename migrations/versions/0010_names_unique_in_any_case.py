"""names unique whatever their case: applications per owner, plugins per owner, registry models; playground
key labels name the user by id, not by e-mail

The services compared names lower-cased while the database compared them as typed, so 20 parallel
creates of "Bot" and "bot" gave two applications. The database now holds the same rule (a unique index
on lower(name)). Names that already differ only in case are told apart first by a suffix. The
case-sensitive constraints stay: the new indexes imply them, and SQLite could drop them only by
rebuilding tables that others refer to.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 21:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# (table, new index, columns of the scope besides the name)
UNIQUE_NAMES = (
    ('applications', 'uq_applications_owner_lower_name', ('created_by_id',)),
    ('plugins', 'uq_plugins_owner_lower_name', ('created_by_id',)),
    ('registry_models', 'uq_registry_models_lower_name', ()),
)


def _tell_apart(connection, table, scope):
    """Rename the second and later of names equal in any case: "Bot" stays, "bot" becomes "bot (2)"."""
    rows = connection.execute(sa.text(f"SELECT id, name{''.join(', ' + c for c in scope)} FROM {table} ORDER BY id")).all()
    taken = {(tuple(row[2:]), row.name.lower()) for row in rows}
    seen = set()
    for row in rows:
        key = (tuple(row[2:]), row.name.lower())
        if key not in seen:
            seen.add(key)
            continue
        n = 2
        while (key[0], f"{row.name[:90]} ({n})".lower()) in taken:
            n += 1
        new = f"{row.name[:90]} ({n})"
        taken.add((key[0], new.lower()))
        connection.execute(sa.text(f"UPDATE {table} SET name = :name WHERE id = :id"), {"name": new, "id": row.id})


def upgrade():
    connection = op.get_bind()
    for table, index, scope in UNIQUE_NAMES:
        _tell_apart(connection, table, scope)
        op.create_index(index, table, [*scope, sa.text('lower(name)')], unique=True)
    # The playground's keys were labelled with the user's e-mail, which then reached /metrics and the logs.
    users = connection.execute(sa.text("SELECT id, email FROM users")).all()
    for user in users:
        connection.execute(
            sa.text("UPDATE api_keys SET label = :new WHERE purpose = 'playground' AND label = :old"),
            {"new": f"playground · user {user.id}", "old": f"playground · {user.email}"[:100]},
        )


def downgrade():
    connection = op.get_bind()
    for user in connection.execute(sa.text("SELECT id, email FROM users")).all():
        connection.execute(
            sa.text("UPDATE api_keys SET label = :old WHERE purpose = 'playground' AND label = :new"),
            {"new": f"playground · user {user.id}", "old": f"playground · {user.email}"[:100]},
        )
    for table, index, _ in UNIQUE_NAMES:
        op.drop_index(index, table_name=table)
