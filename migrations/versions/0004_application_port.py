"""applications.port: an application keeps its endpoint's port across restarts and redeploys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:20:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('port', sa.Integer(), nullable=True))
    # A running application keeps the port it has now.
    op.execute('UPDATE applications SET port = process_port WHERE process_port IS NOT NULL')


def downgrade():
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.drop_column('port')
