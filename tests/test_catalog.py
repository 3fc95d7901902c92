"""The hot path's product cache: one read refreshes every ageing product of the process."""

import time
from datetime import timedelta

from sqlalchemy import event

from flashsale.extensions import db
from flashsale.inventory import catalog


def test_one_read_refreshes_every_ageing_product_of_the_process(app, make_product, monkeypatch):
    """Over a sale of many products each process reads the catalog once per CACHE_SECONDS, not once per
    product: the read for one product brings back every product whose read has expired, and those past
    half their life (so products first read at different moments come to share one refresh)."""
    # p3 and p4 open in two hours, so reading p0 does not bring them along (the next test's rule).
    ids = [make_product(slug=f"p{n}", starts_in=timedelta(hours=2 if n >= 3 else -1)) for n in range(5)]
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


def test_the_first_read_of_a_product_brings_every_sale_open_now_that_the_process_has_not_read(
        app, make_product):
    """A drop of many products is met with one read per process, not one per product through Flask."""
    open_now = [make_product(slug=f"open{n}") for n in range(3)]
    soon = make_product(slug="soon", starts_in=timedelta(seconds=catalog.OPENING_SOON_SECONDS / 2))
    later = make_product(slug="later", starts_in=timedelta(hours=2))
    ended = make_product(slug="ended", starts_in=timedelta(hours=-3))  # its hour-long window is over
    catalog.forget()
    with app.app_context():
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            assert catalog.sale_info(db.session, "open0").id == open_now[0]
            assert [catalog.cached_sale_info(str(pid)).id for pid in [*open_now, soon]] == [*open_now, soon]
            assert catalog.cached_sale_info("later") is None and catalog.cached_sale_info(str(ended)) is None
            assert catalog.sale_info(db.session, "later").id == later  # read when asked for
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        assert len([s for s in statements if "FROM products" in s]) == 2, statements
        db.session.rollback()
    catalog.forget()
