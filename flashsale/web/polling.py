"""Answering watchers' polls: one stock-snapshot read, the server's pace, and HTTP caching a CDN can use.

A poll answer carries `Cache-Control: public, max-age=POLL_MAX_AGE_SECONDS`, an ETag that changes
exactly when what it shows changes, and the pace (`poll_seconds` in the body, `Poll-Seconds` header);
a request whose If-None-Match names the current ETag gets 304 with no body. Holds, tickets and every
other answer carrying a token stay `no-store` (security.add_security_headers).
"""

from datetime import datetime, timezone

from flask import current_app, request

from ..errors import NotFound
from ..extensions import db, redis_store
from ..inventory import catalog, snapshot
from ..inventory.pacing import Pacing
from ..serialise import iso, polled_product_text


def watch(ref):
    """The snapshot of the product `ref` names and the seconds its watcher should wait before the next poll."""
    session = db.session
    product_id = catalog.product_id(session, ref)
    try:
        snap = snapshot.read(session, redis_store.client, product_id, watcher=request.remote_addr)
    except NotFound:
        catalog.forget_id(ref)
        raise
    return snap, pace(snap)


def watch_all():
    """[(snapshot, poll seconds)] for every product, in the sales list's order."""
    session, redis = db.session, redis_store.client
    ids = snapshot.catalog(session, redis)
    found = snapshot.read_many(session, redis, ids, watcher=request.remote_addr)
    return [(found[pid], pace(found[pid])) for pid in ids if pid in found]


def pace(snap):
    """Seconds until this watcher's next poll, by the sale's state and how many are watching."""
    return Pacing.from_config(current_app.config).seconds(snap.state, snap.starts - snap.now, snap.watchers)


def product_answer(snap, poll_seconds):
    """GET /api/products/<ref>: the product from its snapshot."""
    return cached(*product_body(snap, poll_seconds), poll_seconds)


def product_body(snap, poll_seconds):
    """(JSON text, ETag) of GET /api/products/<ref> (the poll gate answers with the same)."""
    return polled_product_text(snap, poll_seconds), snap.etag


def products_answer(watched):
    """GET /api/products: every product from its snapshot; one ETag for the whole list."""
    body = '{"products":[' + ",".join(polled_product_text(s, p) for s, p in watched) + "]}"
    etag = '"' + ".".join(s.etag.strip('"') for s, _ in watched) + '"' if watched else '"none"'
    if len(etag) > 200:
        etag = f'"{snapshot.crc(etag)}-{len(watched)}"'
    poll = min((p for _, p in watched), default=current_app.config["POLL_LIVE_SECONDS"])
    return cached(body, etag, poll)


def stock_answer(snap, poll_seconds):
    """The product page's poll: available units, total, state, the server's clock and the pace."""
    return cached(*stock_body(snap, poll_seconds), poll_seconds)


def stock_body(snap, poll_seconds):
    """(JSON text, ETag) of the product page's poll (the poll gate answers with the same)."""
    now = iso(datetime.fromtimestamp(snap.now, timezone.utc))
    body = (f'{{"available":{snap.available},"total":{snap.total},"state":"{snap.state}",'
            f'"server_time":"{now}","poll_seconds":{poll_seconds}}}')
    return body, snap.etag


def cached(body, etag, poll_seconds):
    """A JSON answer a cache may keep briefly, or 304 when the client already has this ETag."""
    headers = caching_headers(current_app.config, etag, poll_seconds)
    if matches(request.headers.get("If-None-Match"), etag):
        return current_app.response_class(status=304, headers=headers)
    return current_app.response_class(body, 200, headers, mimetype="application/json")


def caching_headers(config, etag, poll_seconds):
    """The poll answer's ETag, Cache-Control and Poll-Seconds headers."""
    return {"ETag": etag, "Cache-Control": f"public, max-age={config['POLL_MAX_AGE_SECONDS']}",
            "Poll-Seconds": str(poll_seconds)}


def matches(if_none_match, etag):
    """True when an If-None-Match header names this ETag (or *)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))
