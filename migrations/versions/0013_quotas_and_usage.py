"""quotas and usage: limits on keys, applications and users; each day's usage per key; the usage stream's cursor

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 19:31:23.900324

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('usage_cursor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_cursor'))
    )
    op.create_table('usage_days',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('application_id', sa.Uuid(), nullable=False),
    sa.Column('application_name', sa.String(length=100), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('key_label', sa.String(length=100), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_days')),
    sa.UniqueConstraint('day', 'application_id', 'key_id', name='uq_usage_days_day_application_key')
    )
    with op.batch_alter_table('usage_days', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_days_application_id'), ['application_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_days_day'), ['day'], unique=False)
        batch_op.create_index('ix_usage_days_user_day', ['user_id', 'day'], unique=False)

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('limit_rpm', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_tpm', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_daily_tokens', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_monthly_tokens', sa.BigInteger(), nullable=True))

    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('limit_rpm', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_tpm', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_daily_tokens', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_monthly_tokens', sa.BigInteger(), nullable=True))

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('limit_rpm', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_tpm', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_daily_tokens', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_monthly_tokens', sa.BigInteger(), nullable=True))



def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('limit_monthly_tokens')
        batch_op.drop_column('limit_daily_tokens')
        batch_op.drop_column('limit_tpm')
        batch_op.drop_column('limit_rpm')

    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.drop_column('limit_monthly_tokens')
        batch_op.drop_column('limit_daily_tokens')
        batch_op.drop_column('limit_tpm')
        batch_op.drop_column('limit_rpm')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('limit_monthly_tokens')
        batch_op.drop_column('limit_daily_tokens')
        batch_op.drop_column('limit_tpm')
        batch_op.drop_column('limit_rpm')

    with op.batch_alter_table('usage_days', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_days_user_day')
        batch_op.drop_index(batch_op.f('ix_usage_days_day'))
        batch_op.drop_index(batch_op.f('ix_usage_days_application_id'))

    op.drop_table('usage_days')
    op.drop_table('usage_cursor')
