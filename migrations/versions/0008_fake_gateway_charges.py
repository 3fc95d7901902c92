"""the fake payment gateway's record of charges, in the database instead of Redis

The fake gateway kept its charges in Redis hashes; a Redis failover that lost the last writes lost charges
with them, and `flask audit` then blamed the engine for money without goods. The fake now writes this table,
in transactions of its own. Charges held in Redis before this revision are not copied: the fake is a demo
and test stand-in, and a shop that used it resets its sale (`flask seed --reset`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 22:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'fake_gateway_charges',
        sa.Column('idempotency_key', sa.String(length=200), nullable=False),
        sa.Column('calls', sa.Integer(), server_default='0', nullable=False),
        sa.Column('charge_id', sa.String(length=40), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=True),
        sa.Column('amount_cents', sa.Integer(), server_default='0', nullable=False),
        sa.Column('reference', sa.String(length=64), server_default='', nullable=False),
        sa.CheckConstraint("status IS NULL OR status IN ('captured', 'refused', 'voided', 'refunded')",
                           name=op.f('ck_fake_gateway_charges_status_known')),
        sa.PrimaryKeyConstraint('idempotency_key', name=op.f('pk_fake_gateway_charges')),
        sa.UniqueConstraint('charge_id', name=op.f('uq_fake_gateway_charges_charge_id')),
    )


def downgrade():
    op.drop_table('fake_gateway_charges')
