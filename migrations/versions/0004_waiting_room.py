"""the waiting room: opt-in per product, with its admission rate

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waiting_room', sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
        batch_op.add_column(sa.Column('admission_rate', sa.Integer(), nullable=True))
        batch_op.create_check_constraint(op.f('ck_products_admission_rate_positive'),
                                         'admission_rate IS NULL OR admission_rate >= 1')


def downgrade():
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_products_admission_rate_positive'), type_='check')
        batch_op.drop_column('admission_rate')
        batch_op.drop_column('waiting_room')
