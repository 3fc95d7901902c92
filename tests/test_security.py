"""Abuse and security: unguessable hold tokens, no listing of others' holds, rate limits (per address, per
email, proxy-aware, shared across processes, failing closed), CSRF on every form, security headers,
SECRET_KEY and ADMIN_TOKEN handling, masked emails, and no stack trace ever reaching a client.
"""

import hmac
import logging
import re
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from config import TestConfig
from flashsale import create_app, models
from flashsale.extensions import db, limiter
from flashsale.models import Order
from flashsale.serialise import mask_emails
from tests.faults import DATABASE_URL, hold
from tests.live_server import LiveServer, free_port

ROOT = Path(__file__).resolve().parent.parent
HOLDS = "/api/products/ps5/holds"


@pytest.fixture(autouse=True)
def restore_limiter():
    """Flask-Limiter keeps its settings on the one global `limiter`: put them back after each test."""
    saved = dict(limiter.__dict__)
    yield
    limiter.__dict__.clear()
    limiter.__dict__.update(saved)


@pytest.fixture
def sale(app, make_product):
    make_product(slug="ps5", total_stock=50, max_per_customer=1)


def place(client, email, address="203.0.113.1", **headers):
    return client.post(HOLDS, json={"email": email}, headers=headers,
                       environ_base={"REMOTE_ADDR": address})


def snapshot(app):
    with app.app_context():
        rows = db.session.execute(select(Order.id, Order.status)).all()
        db.session.remove()
        return sorted(rows)


def limited(**overrides):
    """An app with rate limiting on and the given limits (per address and per email)."""
    settings = {"RATELIMIT_ENABLED": True, "RATELIMIT_HOLD_PER_ADDRESS": "1000/minute",
                "RATELIMIT_HOLD_PER_EMAIL": "1000/minute", **overrides}
    return create_app(TestConfig, **settings)


# --- headers ---------------------------------------------------------------------------------------

def csp_directives(response):
    policy = response.headers["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", ["/", "/products/ps5", "/api/products", "/no-such-page", "/healthz",
                                  "/admin/"])
def test_every_answer_carries_the_security_headers(client, sale, path):
    response = client.get(path)
    csp = csp_directives(response)
    assert csp["default-src"] == ["'self'"]
    script = csp.get("script-src", csp["default-src"])
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script
    assert csp["frame-ancestors"] == ["'none'"] and response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] in ("same-origin", "no-referrer")


def test_templates_have_no_inline_script_for_the_policy_to_block():
    for template in (ROOT / "templates").rglob("*.html"):
        html = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"inline <script> in {template}"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline event handler in {template}"
        assert "javascript:" not in html.lower(), f"javascript: URL in {template}"


def test_answers_carrying_a_hold_token_are_never_cached(client, sale):
    created = place(client, "ann@example.com")
    assert created.headers["Cache-Control"] == "no-store"
    for path in (f"/api/holds/{created.json['id']}", f"/holds/{created.json['id']}"):
        assert client.get(path).headers["Cache-Control"] == "no-store"


def test_the_api_grants_no_cross_origin_access(client, sale):
    response = client.post(HOLDS, json={"email": "ann@example.com"},
                           headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


# --- hold tokens -----------------------------------------------------------------------------------

def test_hold_ids_are_unguessable_tokens_from_the_system_csprng(monkeypatch):
    ids = {models.new_hold_id() for _ in range(2000)}
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert len(ids) == 2000 and all(len(i) == 24 and set(i) <= alphabet for i in ids)  # 144 bits
    monkeypatch.setattr(models.secrets, "token_urlsafe", lambda n: f"csprng-{n}")
    assert models.new_hold_id() == "csprng-18"


def tampered(token):
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    return [flipped, token[:-1], token + "A", token.swapcase(), token[::-1]]


def test_acting_on_a_hold_needs_its_exact_token(app, client, sale):
    token = place(client, "ann@example.com").json["id"]
    before = snapshot(app)
    for guess in tampered(token):
        for method, path in (("GET", f"/api/holds/{guess}"), ("POST", f"/api/holds/{guess}/confirm"),
                             ("POST", f"/api/holds/{guess}/release"), ("GET", f"/holds/{guess}"),
                             ("POST", f"/holds/{guess}/confirm"), ("POST", f"/holds/{guess}/release")):
            assert client.open(path, method=method).status_code == 404, (method, path)
    assert snapshot(app) == before
    assert client.get(f"/api/holds/{token}").status_code == 200


def test_no_endpoint_lists_other_shoppers_holds(app, client, sale):
    secrets_seen = []
    for email in ("ann.secret@example.com", "bob.secret@example.com"):
        token = place(client, email).json["id"]
        secrets_seen += [token, email, email.split("@")[0]]
    checked = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        if set(rule.arguments) - {"ref"}:
            continue  # a hold's own pages: reachable only with its token
        path = rule.rule.replace("<ref>", "ps5")
        body = client.get(path).get_data(as_text=True)
        checked.append(path)
        for secret in secrets_seen:
            assert secret not in body, f"{path} reveals {secret}"
    assert {"/", "/api/products", "/admin/", "/admin/metrics"} <= set(checked)


# --- rate limits -----------------------------------------------------------------------------------

def test_holds_are_limited_per_client_address(app, sale):
    client = limited(RATELIMIT_HOLD_PER_ADDRESS="3/minute").test_client()
    answers = [place(client, f"b{i}@example.com").status_code for i in range(4)]
    assert answers[:3] == [201] * 3
    refused = place(client, "b9@example.com")
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert place(client, "c@example.com", address="203.0.113.2").status_code == 201
    assert len(snapshot(app)) == 4


def test_holds_are_limited_per_email_whatever_the_address(sale):
    client = limited(RATELIMIT_HOLD_PER_EMAIL="2/minute").test_client()
    statuses = [place(client, "Ann@Example.com ", address=f"198.51.100.{i}").status_code
                for i in range(3)]
    assert statuses == [201, 409, 429]  # the 409 is the per-customer limit; the 429 the rate limit


def test_a_forged_forwarded_for_is_ignored_without_trusted_proxies(sale):
    client = limited(RATELIMIT_HOLD_PER_ADDRESS="2/minute").test_client()
    statuses = [place(client, f"b{i}@example.com", **{"X-Forwarded-For": f"192.0.2.{i}"}).status_code
                for i in range(3)]
    assert statuses == [201, 201, 429]


def test_behind_one_trusted_proxy_only_the_hop_it_added_is_believed(sale):
    client = limited(TRUSTED_PROXIES=1, RATELIMIT_HOLD_PER_ADDRESS="2/minute").test_client()

    def via_proxy(email, forwarded_for):
        return place(client, email, address="10.0.0.1", **{"X-Forwarded-For": forwarded_for}).status_code

    assert via_proxy("a@example.com", "192.0.2.1") == 201
    assert via_proxy("b@example.com", "192.0.2.1") == 201
    # The shopper forges an extra hop; the proxy appends the real address, which is what counts.
    assert via_proxy("c@example.com", "6.6.6.6, 192.0.2.1") == 429
    assert via_proxy("d@example.com", "192.0.2.2") == 201  # another shopper behind the same proxy


def test_the_buy_form_is_rate_limited_too(sale):
    client = limited(RATELIMIT_HOLD_PER_ADDRESS="1/minute").test_client()
    form = {"email": "ann@example.com", "quantity": "1", "idempotency_key": "web-form-key-1"}
    assert client.post("/products/ps5/hold", data=form).status_code == 303
    again = client.post("/products/ps5/hold", data={**form, "idempotency_key": "web-form-key-2"})
    assert again.status_code == 429 and "Traceback" not in again.get_data(as_text=True)


def test_a_limiter_outage_fails_closed_with_503(app, sale, monkeypatch):
    """The hold route's own count (web/hold_limits.py) and Flask-Limiter's (the buy form) both fail
    closed: a limit that cannot be counted refuses the request, which changes nothing."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from flashsale.web import hold_limits

    def unreachable(*args, **kwargs):
        raise RedisConnectionError("the limits' Redis is unreachable")

    monkeypatch.setattr(hold_limits, "LIMITS_SCRIPT", unreachable)
    refused = place(limited().test_client(), "ann@example.com")
    assert refused.status_code == 503 and refused.json["error"]["code"] == "unavailable"
    assert refused.headers["Retry-After"]

    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = limited(RATELIMIT_STORAGE_URI=dead,
                     RATELIMIT_STORAGE_OPTIONS={"socket_connect_timeout": 0.5}).test_client()
    form = {"email": "bob@example.com", "quantity": "1", "idempotency_key": "web-form-key-9"}
    refused = client.post("/products/ps5/hold", data=form, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert snapshot(app) == []


def test_rate_limits_are_shared_by_every_web_server_process(app, sale):
    """Two web servers (one worker process each, so which process answers is certain) on one
    Redis: a client's 10-a-minute allowance is spent across both, not 10 at each."""
    settings = {"RATELIMIT_ENABLED": "true", "RATELIMIT_HOLD_PER_ADDRESS": "10/minute",
                "RATELIMIT_HOLD_PER_EMAIL": "1000/minute"}
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, **settings) as one, \
            LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, **settings) as two:
        urls = [one.url, two.url] * 20
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: hold(urls[i], "ps5", f"b{i}@example.com"), range(40)))
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [201] * 10 + [429] * 30
    assert all(answer.code == "rate_limited" for answer in answers if answer.status == 429)


# --- configuration secrets -------------------------------------------------------------------------

def test_a_secret_key_is_required_outside_development():
    for missing in (None, ""):
        with pytest.raises(RuntimeError, match="SECRET_KEY"):
            create_app(TestConfig, ENV_NAME="production", SECRET_KEY=missing)
    assert create_app(TestConfig, ENV_NAME="production", SECRET_KEY="s3cret").secret_key == "s3cret"
    assert create_app(TestConfig, ENV_NAME="development", SECRET_KEY=None).secret_key


def test_the_admin_token_is_required_and_compared_in_constant_time(sale, monkeypatch):
    client = create_app(TestConfig, ADMIN_TOKEN="correct-horse-battery").test_client()
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert client.get("/admin/metrics").status_code == 404
    assert client.get("/admin/", headers={"X-Admin-Token": "correct-horse-batterx"}).status_code == 404
    assert client.get("/admin/metrics?token=correct").status_code == 404
    assert client.get("/admin/metrics", headers={"X-Admin-Token": "correct-horse-battery"}).status_code == 200
    assert client.get("/admin/", headers={"Authorization": "Bearer correct-horse-battery"}).status_code == 200
    assert client.get("/admin/metrics?token=correct-horse-battery").status_code == 200
    assert len(compared) == 6 and all(b == b"correct-horse-battery" for _, b in compared)


# --- emails, errors --------------------------------------------------------------------------------

def test_admin_views_never_show_a_full_email(client, sale):
    place(client, "very.private@example.com")
    for path in ("/admin/", "/admin/metrics"):
        body = client.get(path).get_data(as_text=True)
        assert "very.private" not in body, path


def test_log_lines_and_tracebacks_mask_emails(caplog):
    log = logging.getLogger("flashsale.test_security")
    with caplog.at_level(logging.INFO):
        log.warning("hold for %s refused", "very.private@example.com")
        try:
            raise ValueError("duplicate key for very.private@example.com")
        except ValueError:
            log.exception("unexpected")
    assert "very.private" not in caplog.text
    assert "v***@example.com" in caplog.text and "ValueError" in caplog.text
    assert mask_emails("a@b.io and zed@x.org") == "a***@b.io and z***@x.org"


def test_a_crash_shows_no_stack_trace_and_changes_nothing(app, sale, caplog, monkeypatch):
    crashing = create_app(TestConfig, TESTING=False)

    @crashing.get("/api/crash")
    def api_crash():
        raise RuntimeError("internal detail: password hunter2 for very.private@example.com")

    @crashing.get("/crash")
    def page_crash():
        raise RuntimeError("internal detail: password hunter2")

    from flashsale import checkout
    monkeypatch.setattr(checkout.holds, "place_hold", lambda *a, **k: 1 / 0)
    client = crashing.test_client()
    # Alembic's fileConfig (run by the app fixture's migrations) disables existing loggers; undo that.
    monkeypatch.setattr(logging.getLogger("flashsale.web.handlers"), "disabled", False)
    with caplog.at_level(logging.ERROR):
        answers = [client.get("/api/crash"), client.get("/crash", headers={"Accept": "text/html"}),
                   client.post(HOLDS, json={"email": "ann@example.com"})]
    for answer in answers:
        body = answer.get_data(as_text=True)
        assert answer.status_code == 500
        for leak in ("Traceback", "RuntimeError", "ZeroDivisionError", "hunter2", 'File "'):
            assert leak not in body
    assert answers[0].json["error"]["code"] == "internal" and answers[1].mimetype == "text/html"
    assert "RuntimeError" in caplog.text and "very.private" not in caplog.text  # logged, masked
    assert snapshot(app) == []


# --- CSRF ------------------------------------------------------------------------------------------

def test_every_form_post_needs_a_csrf_token(app, sale, client):
    token = place(client, "ann@example.com").json["id"]
    guarded = create_app(TestConfig, WTF_CSRF_ENABLED=True)
    browser = guarded.test_client()
    before = snapshot(app)
    # The API needs no cookie, and Stripe's webhooks are authenticated by their signature
    # (tests/test_stripe_payments.py): every other POST is a form, and needs its token.
    posts = [rule for rule in guarded.url_map.iter_rules()
             if "POST" in rule.methods and not rule.rule.startswith(("/api/", "/webhooks/"))]
    assert {"/products/<ref>/hold", "/holds/<token>/confirm", "/holds/<token>/release"} <= \
        {rule.rule for rule in posts}
    for rule in posts:
        path = rule.rule.replace("<ref>", "ps5").replace("<token>", token)
        answer = browser.post(path, data={"email": "eve@example.com", "quantity": "1"})
        assert answer.status_code == 400, path
    assert snapshot(app) == before
    page = browser.get("/products/ps5").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', page)
    answer = browser.post("/products/ps5/hold", data={"email": "eve@example.com", "quantity": "1",
                                                      "csrf_token": csrf.group(1)})
    assert answer.status_code == 303  # with the token, the same form works


def test_the_api_is_stateless_and_the_pages_keep_their_session(app, client, make_product):
    """API requests skip the session (no cookie read or written); the shop's forms still get theirs."""
    from flask import request
    from flask.sessions import NullSession

    make_product()
    with app.test_request_context("/api/products/ps5"):
        assert isinstance(app.session_interface.open_session(app, request), NullSession)
    api = client.post("/api/products/ps5/holds", json={"email": "stateless@example.com"})
    assert api.status_code == 201 and "Set-Cookie" not in api.headers
    with app.test_request_context("/products/ps5"):
        assert not isinstance(app.session_interface.open_session(app, request), NullSession)
