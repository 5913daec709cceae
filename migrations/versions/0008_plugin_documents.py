"""plugin documents: the texts a knowledge-retrieval plugin indexes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'plugin_documents',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('plugin_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['plugin_id'], ['plugins.id'], name=op.f('fk_plugin_documents_plugin_id_plugins'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_plugin_documents')),
        sa.UniqueConstraint('plugin_id', 'name', name='uq_plugin_documents_plugin_name'),
    )
    with op.batch_alter_table('plugin_documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_plugin_documents_plugin_id'), ['plugin_id'], unique=False)


def downgrade():
    with op.batch_alter_table('plugin_documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_plugin_documents_plugin_id'))
    op.drop_table('plugin_documents')
