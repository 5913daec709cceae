"""plugins: a type and its configuration, an owner, published; names unique per owner

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 01:10:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('plugins', schema=None) as batch_op:
        batch_op.drop_constraint('uq_plugins_name', type_='unique')
        batch_op.drop_column('config_schema')
        batch_op.add_column(sa.Column('type', sa.String(length=32), server_default='system_prompt', nullable=False))
        batch_op.add_column(sa.Column('config', sa.JSON(), server_default='{}', nullable=False))
        batch_op.add_column(sa.Column('published', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('created_by_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_plugins_created_by_id'), ['created_by_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_plugins_created_by_id_users'), 'users', ['created_by_id'], ['id'], ondelete='RESTRICT')
        batch_op.create_unique_constraint('uq_plugins_owner_name', ['created_by_id', 'name'])
    # Plugins from before owners: the platform's, offered to everyone.
    op.execute('UPDATE plugins SET published = true WHERE created_by_id IS NULL')


def downgrade():
    with op.batch_alter_table('plugins', schema=None) as batch_op:
        batch_op.drop_constraint('uq_plugins_owner_name', type_='unique')
        batch_op.drop_constraint(batch_op.f('fk_plugins_created_by_id_users'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_plugins_created_by_id'))
        batch_op.drop_column('created_by_id')
        batch_op.drop_column('published')
        batch_op.drop_column('config')
        batch_op.drop_column('type')
        batch_op.add_column(sa.Column('config_schema', sa.JSON(), server_default='{}', nullable=False))
        batch_op.create_unique_constraint('uq_plugins_name', ['name'])
