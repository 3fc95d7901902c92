"""The hot path's product cache: one read refreshes every ageing product of the process."""

import time

from sqlalchemy import event

from flashsale.extensions import db
from flashsale.inventory import catalog


def test_one_read_refreshes_every_ageing_product_of_the_process(app, make_product, monkeypatch):
    """Over a sale of many products each process reads the catalog once per CACHE_SECONDS, not once per
    product: the read for one product brings back every product whose read has expired, and those past
    half their life (so products first read at different moments come to share one refresh)."""
    ids = [make_product(slug=f"p{n}") for n in range(5)]
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    catalog.forget()
    with app.app_context():
        for n in range(3):
            catalog.sale_info(db.session, f"p{n}")
        now[0] += catalog.CACHE_SECONDS / 4
        for n in range(3, 5):  # read later, and not yet half-way: read alone
            catalog.sale_info(db.session, f"p{n}")
        now[0] += catalog.CACHE_SECONDS * 3 / 4 + 0.1  # p0-p2 expired, p3 and p4 past half their life
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            assert catalog.sale_info(db.session, "p0").id == ids[0]
            for n in range(1, 5):  # the others were refreshed by that one read
                assert catalog.sale_info(db.session, str(ids[n])).slug == f"p{n}"
                assert catalog.cached_sale_info(f"p{n}").id == ids[n]
            now[0] += catalog.CACHE_SECONDS - 0.1  # and all five now live until the same moment
            assert all(catalog.cached_sale_info(f"p{n}") is not None for n in range(5))
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        assert len([s for s in statements if "FROM products" in s]) == 1, statements
        db.session.rollback()
    catalog.forget()


def test_while_one_refresh_is_in_flight_every_expired_product_keeps_its_old_read(monkeypatch):
    """The sold-out gate sends one buyer through Flask to read the catalog again, not one per product."""
    infos = {slug: catalog.SaleInfo(n, slug, 1, 1, None, None) for n, slug in enumerate(("a", "b"))}
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    catalog.forget()
    for slug, info in infos.items():
        catalog._cache[slug] = (now[0] + catalog.CACHE_SECONDS, info)
    now[0] += catalog.CACHE_SECONDS + 0.1
    assert catalog.cached_sale_info("a") is None  # this buyer goes through Flask and refreshes both
    assert catalog.cached_sale_info("b") is infos["b"]  # b's buyers keep the old read meanwhile
    now[0] += catalog.REFRESH_GRACE + 0.1  # no new read landed within the grace
    assert catalog.cached_sale_info("b") is None
    catalog.forget()
