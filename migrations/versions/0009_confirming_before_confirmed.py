"""the CONFIRMING event revision 0003 added to holds confirmed before it, put before their CONFIRMED

Revision 0003 gave every hold already CONFIRMED the CONFIRMING event it would have recorded, but inserted
it after the hold's CONFIRMED event, so the ledger told "confirmed, then accepted" and `flask audit`
(invariant 3, which reads a hold's events in id order) reported every such hold as a breach. Here each
such pair of events swaps contents (type, delta, metadata, time): the hold's first event after creation is
its CONFIRMING, the next its CONFIRMED, and nothing is added or lost. Holds whose events are already in
order are untouched; downgrading leaves the corrected order.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 03:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

OUT_OF_ORDER = sa.text("""
SELECT confirmed.id AS first_id, confirmed.type AS first_type, confirmed.delta AS first_delta,
       confirmed.metadata AS first_metadata, confirmed.created_at AS first_at,
       confirming.id AS second_id, confirming.type AS second_type, confirming.delta AS second_delta,
       confirming.metadata AS second_metadata, confirming.created_at AS second_at
FROM inventory_events AS confirming
JOIN inventory_events AS confirmed
  ON confirmed.order_id = confirming.order_id AND confirmed.type = 'CONFIRMED'
WHERE confirming.type = 'CONFIRMING' AND confirming.id > confirmed.id
""").columns(*(sa.column(f"{side}_{name}", kind) for side in ("first", "second") for name, kind in (
    ("id", sa.Integer()), ("type", sa.String()), ("delta", sa.Integer()), ("metadata", sa.JSON()),
    ("at", sa.DateTime(timezone=True)))))
SET = sa.text("UPDATE inventory_events SET type = :type, delta = :delta, metadata = :metadata, created_at = :at "
              "WHERE id = :id").bindparams(sa.bindparam("metadata", type_=sa.JSON()),
                                          sa.bindparam("at", type_=sa.DateTime(timezone=True)))


def upgrade():
    connection = op.get_bind()
    for row in connection.execute(OUT_OF_ORDER).mappings().all():
        # Each row takes the other's contents: the lower id becomes the CONFIRMING, the higher the CONFIRMED.
        connection.execute(SET, [
            {"id": row[f"{target}_id"], **{name: row[f"{source}_{name}"] for name in ("type", "delta", "metadata", "at")}}
            for target, source in (("first", "second"), ("second", "first"))])


def downgrade():
    pass  # the corrected order is kept: 0003's downgrade deletes the CONFIRMING events either way
