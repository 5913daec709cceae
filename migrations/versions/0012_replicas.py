"""replicas: an application's server processes as rows of their own; a roll-out's target release; canaries

Before, an application had one server process, recorded on its own row (process_host, process_pid,
process_port). Each becomes its application's first replica, so a platform upgraded while servers run
still stops and supervises them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 14:00:00

"""
import uuid

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'replicas',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('application_id', sa.Uuid(), nullable=False),
        sa.Column('release', sa.Integer(), nullable=False),
        sa.Column('deploy_id', sa.String(length=32), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('address', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=True),
        sa.Column('port', sa.Integer(), nullable=True),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['application_id'], ['applications.id'], name=op.f('fk_replicas_application_id_applications'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_replicas')),
    )
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replicas_application_id'), ['application_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_replicas_host'), ['host'], unique=False)

    applications = sa.table(
        'applications', sa.column('id', sa.Uuid()), sa.column('status', sa.String()), sa.column('deploy_id', sa.String()),
        sa.column('deployed_release', sa.Integer()), sa.column('process_host', sa.String()),
        sa.column('process_pid', sa.Integer()), sa.column('process_port', sa.Integer()),
        sa.column('deployed_at', sa.DateTime()), sa.column('updated_at', sa.DateTime()),
        sa.column('endpoint', sa.String()),
    )
    replicas = sa.table(
        'replicas', sa.column('id', sa.String()), sa.column('application_id', sa.Uuid()), sa.column('release', sa.Integer()),
        sa.column('deploy_id', sa.String()), sa.column('status', sa.String()), sa.column('host', sa.String()),
        sa.column('address', sa.String()), sa.column('pid', sa.Integer()), sa.column('port', sa.Integer()), sa.column('started_at', sa.DateTime()),
    )
    connection = op.get_bind()
    with_process = connection.execute(sa.select(applications).where(applications.c.process_pid.is_not(None))).all()
    releases = sa.table('releases', sa.column('application_id', sa.Uuid()), sa.column('number', sa.Integer()))
    newest = dict(
        connection.execute(
            sa.select(releases.c.application_id, sa.func.max(releases.c.number)).group_by(releases.c.application_id)
        ).all()
    )
    for row in with_process:
        connection.execute(
            replicas.insert().values(
                id=uuid.uuid4().hex,
                application_id=row.id,
                # A deploy under way serves its application's newest release.
                release=(row.deployed_release if row.status != 'deploying' else None) or newest.get(row.id) or 1,
                deploy_id=row.deploy_id or '',
                status='ready' if row.status in ('running', 'stopping') else 'starting',
                host=row.process_host or '',
                address=(row.endpoint or '').removeprefix('http://').rpartition(':')[0],
                pid=row.process_pid,
                port=row.process_port,
                started_at=row.deployed_at or row.updated_at,
            )
        )

    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_applications_process_host'))
        batch_op.drop_column('process_host')
        batch_op.drop_column('process_pid')
        batch_op.drop_column('process_port')
        batch_op.add_column(sa.Column('rolling_to', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('canary_release', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('canary_percent', sa.Integer(), server_default='0', nullable=False))
    _names_unique_in_any_case()
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('served_at', sa.DateTime(), nullable=True))


def _names_unique_in_any_case():
    """SQLite rebuilds a table to drop its columns, and the rebuilt one lacks 0010's index on an
    expression (which reflection does not see): it is made again (PostgreSQL kept it)."""
    op.execute(
        'CREATE UNIQUE INDEX IF NOT EXISTS uq_applications_owner_lower_name ON applications (created_by_id, lower(name))'
    )


def downgrade():
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_column('served_at')
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.drop_column('canary_percent')
        batch_op.drop_column('canary_release')
        batch_op.drop_column('rolling_to')
        batch_op.add_column(sa.Column('process_port', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('process_pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('process_host', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_applications_process_host'), ['process_host'], unique=False)
    _names_unique_in_any_case()
    # Each application's first serving replica becomes its one server again (the older platform stops
    # and supervises that one; any other is left to the operator).
    connection = op.get_bind()
    replicas = connection.execute(
        sa.text("SELECT application_id, host, pid, port FROM replicas ORDER BY status = 'ready' DESC, started_at")
    ).all()
    done = set()
    for application_id, host, pid, port in replicas:
        if application_id in done:
            continue
        done.add(application_id)
        connection.execute(
            sa.text("UPDATE applications SET process_host = :host, process_pid = :pid, process_port = :port WHERE id = :id"),
            {"host": host, "pid": pid, "port": port, "id": application_id},
        )
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replicas_host'))
        batch_op.drop_index(batch_op.f('ix_replicas_application_id'))
    op.drop_table('replicas')
