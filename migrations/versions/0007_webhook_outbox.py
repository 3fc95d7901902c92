"""the outbox of events for the shop, and their deliveries per endpoint

webhook_events holds each event (order.confirmed, order.refunded, sale.sold_out) written in the
transaction of the change that causes it, with the exact JSON body every attempt sends; webhook_deliveries
holds one row per event and endpoint: pending until a 2xx answer, when it is next due, how often it failed.

Orders CONFIRMED before this revision get their order.confirmed event as already handed out (fanned_out,
so never sent: they were confirmed before the shop subscribed; `flask orders export` lists them), so the
audit's outbox check holds from the first instant.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'webhook_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('webhook_id', sa.String(length=64), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('hold_id', sa.String(length=40), nullable=True),
        sa.Column('product_id', sa.Integer(), nullable=False),
        sa.Column('ordering_key', sa.String(length=64), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('fanned_out', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.CheckConstraint("type IN ('order.confirmed', 'order.refunded', 'sale.sold_out')",
                           name=op.f('ck_webhook_events_type_known')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
        sa.UniqueConstraint('webhook_id', name=op.f('uq_webhook_events_webhook_id')),
    )
    op.create_index('ix_webhook_events_hold_id', 'webhook_events', ['hold_id'])
    op.create_index('ix_webhook_events_unfanned', 'webhook_events', ['id'],
                    postgresql_where=sa.text('NOT fanned_out'), sqlite_where=sa.text('NOT fanned_out'))
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('event_id', sa.Integer(), nullable=False),
        sa.Column('endpoint', sa.String(length=2000), nullable=False),
        sa.Column('ordering_key', sa.String(length=64), nullable=False),
        sa.Column('after_id', sa.Integer(), nullable=True),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('failures', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.String(length=500), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name=op.f('ck_webhook_deliveries_state_known')),
        sa.ForeignKeyConstraint(['event_id'], ['webhook_events.id'],
                                name=op.f('fk_webhook_deliveries_event_id_webhook_events')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
        sa.UniqueConstraint('event_id', 'endpoint', name=op.f('uq_webhook_deliveries_event_id_endpoint')),
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['next_attempt_at'],
                    postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))
    op.create_index('ix_webhook_deliveries_endpoint_key', 'webhook_deliveries',
                    ['endpoint', 'ordering_key', 'event_id'])
    op.create_index('ix_webhook_deliveries_failed', 'webhook_deliveries', ['endpoint'],
                    postgresql_where=sa.text("state = 'failed'"), sqlite_where=sa.text("state = 'failed'"))
    op.execute(BACKFILL)


BACKFILL = """
INSERT INTO webhook_events (webhook_id, type, hold_id, product_id, ordering_key, body, created_at, fanned_out)
SELECT 'msg_backfilled_' || id, 'order.confirmed', id, product_id, 'hold:' || id,
       '{"type": "order.confirmed", "backfilled": true}', COALESCE(confirmed_at, created_at), true
FROM orders WHERE status = 'CONFIRMED' ORDER BY confirmed_at, id
"""


def downgrade():
    op.drop_index('ix_webhook_deliveries_failed', table_name='webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_endpoint_key', table_name='webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_index('ix_webhook_events_unfanned', table_name='webhook_events')
    op.drop_index('ix_webhook_events_hold_id', table_name='webhook_events')
    op.drop_table('webhook_events')
