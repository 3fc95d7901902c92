"""JSON shapes of products and holds (design section 7), shared by the API and the pages' polling."""


def iso(moment):
    """ISO 8601 UTC with a Z, or None."""
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def product_json(product, level, now):
    """A product with its derived stock and sale state."""
    from ..inventory.stock import sale_state

    return {**static_product_json(product), "available": level.available,
            "state": sale_state(product, level.available, now)}


def static_product_json(product):
    """The product's fields that only seeding changes (a stock snapshot keeps them as text)."""
    return {
        "id": product.id,
        "slug": product.slug,
        "name": product.name,
        "description": product.description,
        "price_cents": product.price_cents,
        "total_stock": product.total_stock,
        "max_per_customer": product.max_per_customer,
        "sale_starts_at": iso(product.sale_starts_at),
        "sale_ends_at": iso(product.sale_ends_at),
        "waiting_room": bool(product.waiting_room),
    }


def polled_product_text(snap, poll_seconds):
    """A product as JSON text from its stock snapshot (the product shape plus poll_seconds), built
    without parsing: this is what thousands of watchers poll."""
    return (f'{snap.product_json[:-1]},"available":{snap.available},"state":"{snap.state}",'
            f'"poll_seconds":{poll_seconds}}}')


def hold_json(order):
    """A hold: the order as its owner sees it."""
    return {
        "id": order.id,
        "product_id": order.product_id,
        "email": order.customer_email,
        "quantity": order.quantity,
        "status": order.status,
        "hold_expires_at": iso(order.hold_expires_at),
        "created_at": iso(order.created_at),
        "confirmation_requested_at": iso(order.confirmation_requested_at),
        "confirmed_at": iso(order.confirmed_at),
    }


def ticket_json(ticket):
    """A waiting-room ticket (design section 10), with the line's size and when to ask again."""
    return {
        "id": ticket.id,
        "product_id": ticket.product_id,
        "email": ticket.email,
        "state": ticket.state,
        "position": ticket.position,
        "estimated_wait_seconds": ticket.estimated_wait_seconds,
        "admission": ticket.admission,
        "admission_expires_at": iso(ticket.admission_expires_at),
        "line_length": ticket.line_length,
        "admitted": ticket.admitted_total,
        "admission_rate": ticket.rate,
        "poll_seconds": ticket.poll_seconds,
        "joined_at": iso(ticket.joined_at),
        "admitted_at": iso(ticket.admitted_at),
    }
