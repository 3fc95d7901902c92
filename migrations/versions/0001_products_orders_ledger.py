"""products, orders and the inventory ledger

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 03:33:22.786923

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
   
    op.create_table('products',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=80), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('price_cents', sa.Integer(), nullable=False),
    sa.Column('total_stock', sa.Integer(), nullable=False),
    sa.Column('max_per_customer', sa.Integer(), nullable=False),
    sa.Column('sale_starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sale_ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.CheckConstraint('max_per_customer >= 1', name=op.f('ck_products_max_per_customer_positive')),
    sa.CheckConstraint('price_cents >= 0', name=op.f('ck_products_price_not_negative')),
    sa.CheckConstraint('sale_ends_at > sale_starts_at', name=op.f('ck_products_sale_window_ordered')),
    sa.CheckConstraint('total_stock >= 0', name=op.f('ck_products_total_stock_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_products')),
    sa.UniqueConstraint('slug', name=op.f('uq_products_slug'))
    )
    op.create_table('orders',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('customer_email', sa.String(length=254), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('hold_expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('request_digest', sa.String(length=64), nullable=True),
    sa.CheckConstraint("status IN ('PENDING', 'CONFIRMED', 'EXPIRED', 'RELEASED')", name=op.f('ck_orders_status_known')),
    sa.CheckConstraint('quantity >= 1', name=op.f('ck_orders_quantity_positive')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_orders_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_orders_idempotency_key'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_product_email', ['product_id', 'customer_email'], unique=False)
        batch_op.create_index('ix_orders_product_status_expires', ['product_id', 'status', 'hold_expires_at'], unique=False)

    op.create_table('inventory_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.String(length=40), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('delta', sa.Integer(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("type IN ('HOLD_CREATED', 'CONFIRMED', 'EXPIRED', 'RELEASED')", name=op.f('ck_inventory_events_type_known')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_inventory_events_order_id_orders')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_inventory_events_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inventory_events'))
    )
    with op.batch_alter_table('inventory_events', schema=None) as batch_op:
        batch_op.create_index('ix_inventory_events_order_id', ['order_id'], unique=False)
        batch_op.create_index('ix_inventory_events_product_id', ['product_id'], unique=False)




def downgrade():
   
    with op.batch_alter_table('inventory_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inventory_events_product_id')
        batch_op.drop_index('ix_inventory_events_order_id')

    op.drop_table('inventory_events')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_product_status_expires')
        batch_op.drop_index('ix_orders_product_email')

    op.drop_table('orders')
    op.drop_table('products')

