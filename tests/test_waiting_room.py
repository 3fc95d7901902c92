"""The waiting room (design section 10): fair places, admission in order, admissions that bind a hold.

Admission is a token bucket on Redis's clock. These tests run the line at a rate so slow (one shopper
every 1,000 s) that the clock admits nobody while they run, and hand the bucket exactly the tokens they
want (`give_tokens`), so which tickets are admitted, and in what order, is decided by the line alone.
"""

import statistics
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from flashsale import keys
from flashsale.errors import NotAdmitted
from flashsale.extensions import db
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import catalog, soldout
from flashsale.inventory.confirmation import accept_confirmation
from flashsale.inventory.payments import take_payment
from flashsale.inventory.waiting_room import WaitingRoom, email_digest
from flashsale.models import Order, Product

SECRET = "test-secret"  # TestConfig.SECRET_KEY: the app signs with the same one
SLOW = 0.001  # admissions per second: none by the clock while a test runs


@pytest.fixture
def room(redis):
    return WaitingRoom(redis, SECRET, admission_seconds=90, default_rate=SLOW)


@pytest.fixture(autouse=True)
def slow_line(app):
    """The app's waiting rooms admit at SLOW too (products here leave admission_rate to the config)."""
    app.config["WAITING_ROOM_RATE"] = SLOW
    yield
    app.config["WAITING_ROOM_RATE"] = 50


@pytest.fixture
def line_product(app, make_product, session):
    """A live waiting-room product (one per customer)."""

    def make(slug="drop", total_stock=100, starts_in=timedelta(minutes=-1)):
        pid = make_product(slug=slug, total_stock=total_stock, starts_in=starts_in)
        session.execute(update(Product).where(Product.id == pid).values(waiting_room=True))
        session.commit()
        catalog.forget()
        sale = catalog.sale_info(session, slug)
        session.rollback()  # on SQLite a transaction left open holds the writer lock requests need
        return sale

    return make


def give_tokens(redis, sale, tokens):
    """Let exactly `tokens` more shoppers in at the next call (the bucket refilled just now)."""
    now = redis.time()
    redis.hset(keys.waiting_state(sale.id), mapping={"tokens": tokens, "refilled_at": f"{now[0]}.{now[1]:06d}"})


def admitted_ids(redis, sale):
    return {k.decode() for k in redis.hkeys(keys.waiting_admitted(sale.id))}


def admit_one_by_one(room, redis, sale, tickets):
    """Admit the line one shopper at a time; the order in which tickets were admitted."""
    order, seen = [], set()
    for _ in tickets:
        give_tokens(redis, sale, 1)
        room.view(sale, tickets[0].id)
        new = admitted_ids(redis, sale) - seen
        assert len(new) == 1
        order += list(new)
        seen |= new
    return order


def spearman(ranks_a, ranks_b):
    """Spearman's rank correlation of two rankings of the same items."""
    n = len(ranks_a)
    d2 = sum((a - b) ** 2 for a, b in zip(ranks_a, ranks_b, strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


def test_after_the_opening_shoppers_are_admitted_in_arrival_order(room, redis, line_product):
    sale = line_product()
    tickets = [room.join(sale, f"s{i}@x.io") for i in range(30)]
    assert [t.position for t in tickets] == list(range(1, 31))
    assert all(t.state == "waiting" and t.admission is None for t in tickets)
    assert admit_one_by_one(room, redis, sale, tickets) == [t.id for t in tickets]


def test_before_the_opening_places_are_a_fair_shuffle_and_later_arrivals_come_after(
        room, redis, line_product, session):
    sale = line_product(starts_in=timedelta(hours=1))
    early = [room.join(sale, f"early{i}@x.io") for i in range(200)]
    assert all(t.state == "waiting" and t.estimated_wait_seconds >= 3500 for t in early)
    # The sale opens: from now on, arrival order.
    session.execute(update(Product).where(Product.id == sale.id)
                    .values(sale_starts_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    session.commit()
    catalog.forget()
    sale = catalog.sale_info(session, "drop")
    late = [room.join(sale, f"late{i}@x.io") for i in range(20)]
    order = admit_one_by_one(room, redis, sale, early + late)
    early_ids = [t.id for t in early]
    assert set(order[:200]) == set(early_ids)  # every early shopper before any later one
    assert order[200:] == [t.id for t in late]  # then arrival order
    admitted_rank = {ticket_id: rank for rank, ticket_id in enumerate(order[:200])}
    rho = spearman(list(range(200)), [admitted_rank[t] for t in early_ids])
    # First-to-arrive-first gives rho = 1, last-first rho = -1; a fair shuffle of 200 has a standard
    # deviation of 0.07 around 0, so |rho| < 0.3 fails a fair line about once in 10^5 runs.
    assert abs(rho) < 0.3, rho
    assert statistics.mean(admitted_rank[t] for t in early_ids[:50]) > 50  # the first 50 are not favoured


def test_one_place_per_email_and_joining_again_returns_the_same_ticket(room, redis, line_product):
    sale = line_product()
    first = room.join(sale, "ann@x.io")
    room.join(sale, "bob@x.io")
    again = room.join(sale, "ann@x.io")
    assert first.created and not again.created and again.id == first.id and again.position == 1
    assert redis.zcard(keys.waiting_line(sale.id)) == 2


def test_arrival_times_keep_the_line_order_to_the_microsecond(room, redis, line_product):
    """Shoppers joining together, within the same tenth of a millisecond, still arrived one after another
    (the fairness report orders arrivals by these times)."""
    sale = line_product()
    with ThreadPoolExecutor(8) as pool:
        tickets = list(pool.map(lambda i: room.join(sale, f"s{i}@x.io"), range(200)))
    in_line = sorted(tickets, key=lambda ticket: redis.zscore(keys.waiting_line(sale.id), ticket.id))
    arrivals = [ticket.joined_at for ticket in in_line]
    assert all(earlier < later for earlier, later in zip(arrivals, arrivals[1:], strict=False))


def test_an_admission_is_signed_bound_short_lived_and_single_use(room, redis, line_product):
    sale = line_product()
    other = line_product(slug="other")
    ticket = room.join(sale, "ann@x.io")
    give_tokens(redis, sale, 1)
    admitted = room.view(sale, ticket.id)
    assert admitted.state == "admitted" and admitted.admission and admitted.position is None
    assert admitted.admission_expires_at > datetime.now(timezone.utc) + timedelta(seconds=80)
    forged = WaitingRoom(redis, "another-secret").signer.dumps([sale.id, ticket.id, email_digest("ann@x.io"),
                                                                 admitted.admission_expires_at.timestamp()])
    expired = room.signer.dumps([sale.id, ticket.id, email_digest("ann@x.io"), 1.0])
    for bad, email, product in [(None, "ann@x.io", sale), ("nonsense", "ann@x.io", sale),
                                (forged, "ann@x.io", sale), (expired, "ann@x.io", sale),
                                (admitted.admission, "bob@x.io", sale), (admitted.admission, "ann@x.io", other)]:
        with pytest.raises(NotAdmitted):
            room.use_admission(product, email, bad)
    assert room.use_admission(sale, "ann@x.io", admitted.admission) == ticket.id
    with pytest.raises(NotAdmitted, match="already used"):
        room.use_admission(sale, "ann@x.io", admitted.admission)
    room.give_back(sale, admitted.admission)  # a hold request that changed nothing gives it back
    assert room.use_admission(sale, "ann@x.io", admitted.admission) == ticket.id


def test_admissions_pause_while_sold_out_and_stop_when_the_line_closes(room, redis, line_product):
    sale = line_product()
    tickets = [room.join(sale, f"s{i}@x.io") for i in range(3)]
    redis.set(keys.sold_out(sale.id), "1")
    give_tokens(redis, sale, 2)
    assert room.view(sale, tickets[0].id).state == "waiting"  # units may still come back
    redis.delete(keys.sold_out(sale.id))
    give_tokens(redis, sale, 1)
    assert room.view(sale, tickets[0].id).state == "admitted"
    room.close(sale.id)
    give_tokens(redis, sale, 2)
    assert [room.view(sale, t.id).state for t in tickets] == ["admitted", "sold_out", "sold_out"]
    late = room.join(sale, "late@x.io")
    assert late.created and late.state == "sold_out"


def test_the_last_confirmed_unit_closes_the_line_for_everyone_waiting(room, redis, line_product, session,
                                                                      policy):
    from flashsale.inventory import holds

    sale = line_product(total_stock=1)
    first, *rest = [room.join(sale, f"s{i}@x.io") for i in range(4)]
    give_tokens(redis, sale, 1)
    admission = room.view(sale, first.id).admission
    room.use_admission(sale, "s0@x.io", admission)
    hold = holds.place_hold(session, redis, "drop", "s0@x.io", 1, policy).hold
    accept_confirmation(session, hold.id)
    assert take_payment(session, redis, hold.id, FakeGateway(db.engine)).status == "CONFIRMED"
    assert {room.view(sale, t.id).state for t in rest} == {"sold_out"}


# --- through the API --------------------------------------------------------------------------------

def join(client, email, slug="drop"):
    return client.post(f"/api/products/{slug}/queue", json={"email": email})


def hold(client, email, admission=None, slug="drop", key=None):
    headers = {"Admission": admission} if admission else {}
    if key:
        headers["Idempotency-Key"] = key
    return client.post(f"/api/products/{slug}/holds", json={"email": email}, headers=headers)


def orders(session):
    count = session.execute(select(func.count()).select_from(Order)).scalar_one()
    session.rollback()
    return count


def test_the_api_joins_polls_and_places_a_hold_with_the_admission(client, redis, line_product, session):
    sale = line_product()
    joined = join(client, "Ann@X.io")
    assert joined.status_code == 201 and joined.headers["Cache-Control"] == "no-store"
    ticket = joined.json
    assert set(ticket) >= {"id", "product_id", "email", "state", "position", "estimated_wait_seconds",
                           "admission", "admission_expires_at"}
    assert (ticket["email"], ticket["state"], ticket["position"], ticket["admission"]) == (
        "ann@x.io", "waiting", 1, None)
    assert join(client, "ann@x.io").json["id"] == ticket["id"]
    assert join(client, "ann@x.io").status_code == 200
    assert client.get("/api/products/drop").json["waiting_room"] is True
    give_tokens(redis, sale, 1)
    polled = client.get(f"/api/queue/{ticket['id']}").json
    assert polled["state"] == "admitted" and polled["admission_expires_at"].endswith("Z")
    placed = hold(client, "ann@x.io", polled["admission"], key="k1")
    assert placed.status_code == 201
    assert hold(client, "ann@x.io", polled["admission"], key="k1").json["id"] == placed.json["id"]  # replay
    refused = hold(client, "ann@x.io", polled["admission"])  # the admission is used up
    assert refused.status_code == 403 and refused.json["error"]["code"] == "not_admitted"
    assert orders(session) == 1


@pytest.mark.parametrize("case", ["missing", "forged", "expired", "someone_elses", "other_product"])
def test_a_hold_without_a_valid_admission_is_403_and_writes_nothing(case, client, redis, line_product,
                                                                   session):
    sale = line_product()
    other = line_product(slug="other")
    ticket = join(client, "ann@x.io").json
    join(client, "bob@x.io")
    give_tokens(redis, sale, 2)
    admission = client.get(f"/api/queue/{ticket['id']}").json["admission"]
    email, slug = "ann@x.io", "drop"
    if case == "missing":
        admission = None
    elif case == "forged":
        admission = admission[:-4] + ("AAAA" if not admission.endswith("AAAA") else "BBBB")
    elif case == "expired":
        admission = WaitingRoom(redis, SECRET).signer.dumps([sale.id, ticket["id"], email_digest(email), 1.0])
    elif case == "someone_elses":
        email = "bob@x.io"
    else:
        slug = "other"
        assert other.waiting_room
    answer = hold(client, email, admission, slug=slug)
    assert answer.status_code == 403 and answer.json["error"]["code"] == "not_admitted"
    assert orders(session) == 0 and not soldout.is_marked(redis, sale.id)


def test_a_product_without_a_waiting_room_refuses_the_line_and_sells_as_before(client, make_product):
    make_product(slug="plain")
    assert client.get("/api/products/plain").json["waiting_room"] is False
    answer = join(client, "ann@x.io", slug="plain")
    assert answer.status_code == 409 and answer.json["error"]["code"] == "no_waiting_room"
    assert hold(client, "ann@x.io", slug="plain").status_code == 201


def test_bad_tickets_and_bad_joins_get_clear_errors(client, line_product):
    line_product()
    for bad in ("nope", "t1-" + "A" * 24, "t99999-" + "A" * 24):
        assert client.get(f"/api/queue/{bad}").status_code == 404
    assert join(client, "not an email").status_code == 422
    answer = client.post("/api/products/drop/queue", json={"email": "a@x.io", "extra": 1})
    assert answer.status_code == 422 and "extra" in answer.json["error"]["fields"]


# --- the pages --------------------------------------------------------------------------------------

def test_the_pages_join_wait_and_buy_when_admitted(client, redis, line_product, session):
    sale = line_product()
    product_page = client.get("/products/drop").get_data(as_text=True)
    assert "Join the line" in product_page and 'action="/products/drop/hold"' not in product_page
    ahead = join(client, "first@x.io").json
    joined = client.post("/products/drop/queue", data={"email": "ann@x.io"})
    assert joined.status_code == 303 and joined.headers["Location"].startswith("/queue/t")
    waiting = client.get(joined.headers["Location"]).get_data(as_text=True)
    assert "You are in line" in waiting and 'data-position>2<' in waiting
    assert '<noscript><meta http-equiv="refresh"' in waiting and "<progress" in waiting
    again = client.post("/products/drop/queue", data={"email": "ANN@x.io"})
    assert again.headers["Location"] == joined.headers["Location"]  # one place per email
    give_tokens(redis, sale, 2)
    assert client.get(f"/api/queue/{ahead['id']}").json["state"] == "admitted"
    turn = client.get(joined.headers["Location"]).get_data(as_text=True)
    assert "It is your turn" in turn and 'name="admission"' in turn and 'action="/products/drop/hold"' in turn
    admission = turn.split('name="admission" type="hidden" value="')[1].split('"')[0]
    key = turn.split('name="idempotency_key" type="hidden" value="')[1].split('"')[0]
    bought = client.post("/products/drop/hold", data={"email": "ann@x.io", "quantity": 1, "admission": admission,
                                                      "idempotency_key": key})
    assert bought.status_code == 303 and bought.headers["Location"].startswith("/holds/")
    refused = client.post("/products/drop/hold", data={"email": "ann@x.io", "quantity": 1,
                                                       "admission": admission})
    assert refused.status_code == 403 and "waiting room" in refused.get_data(as_text=True)
    assert orders(session) == 1


def test_the_dashboard_shows_each_line_its_rate_waits_and_abandonment(client, redis, line_product):
    sale = line_product()
    tickets = [join(client, f"s{i}@x.io").json for i in range(5)]
    give_tokens(redis, sale, 2)
    client.get(f"/api/queue/{tickets[0]['id']}")
    redis.zadd(keys.waiting_unused(sale.id), {tickets[1]["id"]: 1.0})  # this turn lapsed unused
    (row,) = client.get("/admin/metrics").json["waiting_rooms"]
    assert (row["slug"], row["line_length"], row["admitted"], row["abandoned"]) == ("drop", 3, 2, 1)
    assert row["abandonment"] == 0.5 and row["admitted_per_s_10s"] == 0.2 and row["closed"] is None
    assert row["wait_s"]["p50"] is not None
    page = client.get("/admin/").get_data(as_text=True)
    assert 'data-room-row="drop"' in page and "Waiting rooms" in page


def test_no_more_shoppers_hold_a_turn_than_there_are_units_to_buy(room, redis, line_product):
    sale = line_product(total_stock=3)
    tickets = [room.join(sale, f"s{i}@x.io", available=3) for i in range(6)]
    give_tokens(redis, sale, 6)
    views = [room.view(sale, t.id, available=3) for t in tickets]
    assert [v.state for v in views] == ["admitted"] * 3 + ["waiting"] * 3
    room.use_admission(sale, "s0@x.io", views[0].admission)  # s0 holds a unit: 2 left, 2 turns out
    give_tokens(redis, sale, 6)
    assert room.view(sale, tickets[3].id, available=2).state == "waiting"
    redis.zadd(keys.waiting_unused(sale.id), {tickets[1].id: 1.0})  # s1's turn lapsed unused
    assert room.view(sale, tickets[3].id, available=2).state == "admitted"  # its unit goes to the next
