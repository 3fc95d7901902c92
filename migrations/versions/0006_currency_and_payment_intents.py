"""currencies, and what a card payment by PaymentIntent needs on the payment

Products get `currency` (ISO 4217, lower-case, default usd), and so does each payment (fixed when the
confirmation is accepted, with its amount). A payment taken by PaymentIntent (Stripe) records the
intent's id before any call that can authorise or capture it, the status last read from the gateway,
the client secret while the shopper can still act, the deadline for that, the last failed attempt's
message and the intents it replaced (a declined intent is canceled and replaced for the next card).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 18:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

CURRENCY_CHECK = "length(currency) = 3 AND currency = lower(currency)"


def upgrade():
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('currency', sa.String(length=3), server_default='usd', nullable=False))
        batch_op.create_check_constraint(op.f('ck_products_currency_iso'), CURRENCY_CHECK)
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('currency', sa.String(length=3), server_default='usd', nullable=False))
        batch_op.add_column(sa.Column('intent_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('intent_status', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('client_secret', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('action_deadline', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('replaced_intents', sa.JSON(), nullable=True))
        batch_op.create_unique_constraint(op.f('uq_payments_intent_id'), ['intent_id'])


def downgrade():
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('uq_payments_intent_id'), type_='unique')
        for column in ('replaced_intents', 'last_error', 'action_deadline', 'client_secret', 'intent_status',
                       'intent_id', 'currency'):
            batch_op.drop_column(column)
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_products_currency_iso'), type_='check')
        batch_op.drop_column('currency')
