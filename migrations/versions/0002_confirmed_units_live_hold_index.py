"""confirmed-units counter on products and a partial index of live (PENDING) holds

Derived stock = total_stock - confirmed_units - units of PENDING holds not yet expired. The counter
replaces a SUM over every confirmed order (the sale's history) and is checked by `flask audit`; the
partial index makes the SUM over PENDING holds read only those rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('confirmed_units', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.create_check_constraint(op.f('ck_products_confirmed_units_not_negative'),
                                         'confirmed_units >= 0')
    op.execute(
        "UPDATE products SET confirmed_units = (SELECT COALESCE(SUM(quantity), 0) FROM orders "
        "WHERE orders.product_id = products.id AND orders.status = 'CONFIRMED')"
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_pending_product_expires', ['product_id', 'hold_expires_at'],
                              unique=False,
                              postgresql_where=sa.text("status = 'PENDING'"),
                              sqlite_where=sa.text("status = 'PENDING'"),
                              postgresql_include=['quantity'])


def downgrade():
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_pending_product_expires')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_products_confirmed_units_not_negative'), type_='check')
        batch_op.drop_column('confirmed_units')
