"""Configuration read from the environment (design section 9)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = BASE_DIR / "instance"
EMBEDDED_REDIS_SOCKET = INSTANCE_DIR / "redis.sock"


def normalise_database_url(url):
    """Map plain PostgreSQL URLs to psycopg2, the driver we ship (SQLAlchemy 2.1 would pick psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _bool(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(name, default):
    return int(os.environ.get(name, default))


class Config:
    """Settings for every environment; each one can be overridden by an environment variable."""

    ENV_NAME = os.environ.get("FLASHSALE_ENV", "development")
    SECRET_KEY = os.environ.get("SECRET_KEY")
    SQLALCHEMY_DATABASE_URI = normalise_database_url(
        os.environ.get("DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'flashsale.db'}")
    )
    # pre_ping replaces connections PostgreSQL has dropped (restart, pg_terminate_backend) before use.
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    # Connections each process keeps open between requests. webserver.py sets it to WEB_THREADS; without
    # enough, busy threads open and close a PostgreSQL connection per request (unset: SQLAlchemy's 5).
    if os.environ.get("DB_POOL_SIZE"):
        SQLALCHEMY_ENGINE_OPTIONS["pool_size"] = _int("DB_POOL_SIZE", 5)
    REDIS_URL = os.environ.get("REDIS_URL", f"unix://{EMBEDDED_REDIS_SOCKET}")
    # Redis through Sentinel (design section 13): "host:port,host:port" of the sentinels and the name
    # they watch the primary under. Set, every component asks them for the primary and REDIS_URL is
    # ignored; REDIS_DB and REDIS_PASSWORD say which database and which password on the Redis servers.
    REDIS_SENTINELS = os.environ.get("REDIS_SENTINELS") or None
    REDIS_SENTINEL_SERVICE = os.environ.get("REDIS_SENTINEL_SERVICE", "flashsale")
    REDIS_DB = _int("REDIS_DB", 0)
    REDIS_PASSWORD = os.environ.get("REDIS_PASSWORD") or None
    # Replicas that must hold a waiting-room ticket or admission, or a fake-gateway charge, before it is
    # answered (Redis WAIT): such a write survives the primary's loss. Unset: 1 with sentinels, else 0.
    REDIS_WAIT_REPLICAS = _int("REDIS_WAIT_REPLICAS", -1)
    # Redis calls fail fast during an outage, so a request answers 503 rather than hanging.
    REDIS_SOCKET_TIMEOUT = float(os.environ.get("REDIS_SOCKET_TIMEOUT", "2.0"))

    HOLD_SECONDS = _int("HOLD_SECONDS", 120)
    SWEEP_SECONDS = _int("SWEEP_SECONDS", 5)
    LOCK_TTL_MS = _int("LOCK_TTL_MS", 2000)
    LOCK_WAIT_MS = _int("LOCK_WAIT_MS", 3000)
    RETRY_AFTER_SECONDS = _int("RETRY_AFTER_SECONDS", 1)
    MAX_QUANTITY = _int("MAX_QUANTITY", 10)
    MAX_CONTENT_LENGTH = _int("MAX_CONTENT_LENGTH", 16 * 1024)
    QUEUE_NAME = os.environ.get("QUEUE_NAME", "flashsale")

    RATELIMIT_ENABLED = _bool("RATELIMIT_ENABLED", True)
    RATELIMIT_HEADERS_ENABLED = True
    RATELIMIT_HOLD_PER_ADDRESS = os.environ.get("RATELIMIT_HOLD_PER_ADDRESS", "20/second;300/minute")
    RATELIMIT_HOLD_PER_EMAIL = os.environ.get("RATELIMIT_HOLD_PER_EMAIL", "5/second;30/minute")
    TRUSTED_PROXIES = _int("TRUSTED_PROXIES", 0)
    # Answer sold-out hold requests in front of Flask, in one Redis round trip (soldout_gate.py);
    # off, Flask gives the same answers more slowly.
    SOLD_OUT_GATE = _bool("SOLD_OUT_GATE", True)
    # Place the holds the sold-out gate passed on in front of Flask, by the view's own call
    # (gates/holds.py); off, Flask places them and gives the same answers more slowly.
    HOLD_GATE = _bool("HOLD_GATE", True)
    # Answer watchers' polls from the stock snapshot in front of Flask (poll_gate.py); off, Flask does.
    POLL_GATE = _bool("POLL_GATE", True)

    # Waiting rooms (products with waiting_room on): shoppers admitted per second unless the product
    # sets its own admission_rate, and how long an admission stays valid for placing the hold.
    WAITING_ROOM_RATE = _int("WAITING_ROOM_RATE", 50)
    WAITING_ROOM_ADMISSION_SECONDS = _int("WAITING_ROOM_ADMISSION_SECONDS", 90)

    # Watchers' polls (inventory/pacing.py): seconds between polls by sale state, and the polls per
    # second per product beyond which every watcher is asked to poll less often. Poll answers may be
    # cached (a CDN) for POLL_MAX_AGE_SECONDS.
    POLL_LIVE_SECONDS = float(os.environ.get("POLL_LIVE_SECONDS", "3"))
    POLL_SOLD_OUT_SECONDS = float(os.environ.get("POLL_SOLD_OUT_SECONDS", "10"))
    POLL_ENDED_SECONDS = float(os.environ.get("POLL_ENDED_SECONDS", "300"))
    POLL_UPCOMING_MAX_SECONDS = float(os.environ.get("POLL_UPCOMING_MAX_SECONDS", "60"))
    POLL_NEAR_OPENING_SECONDS = float(os.environ.get("POLL_NEAR_OPENING_SECONDS", "2"))
    POLL_BUDGET_PER_SECOND = float(os.environ.get("POLL_BUDGET_PER_SECOND", "150"))
    POLL_MAX_AGE_SECONDS = _int("POLL_MAX_AGE_SECONDS", 1)

    # Each process writes its metrics to Redis this often, in one round trip, instead of one round trip
    # per request (flashsale/metrics.py); 0: at once. What another process reads lags by at most this.
    METRICS_BATCH_SECONDS = float(os.environ.get("METRICS_BATCH_SECONDS", "0.25"))

    ADMIN_TOKEN = os.environ.get("ADMIN_TOKEN") or None
    # LOG_FORMAT=json: one JSON object per log line, with the request id (web/logs.py); else Python's text.
    LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
    LOG_LEVEL = os.environ.get("LOG_LEVEL", "info")
    PAYMENT_GATEWAY = os.environ.get("PAYMENT_GATEWAY", "fake")
    # One payment attempt's lease: an attempt that has not settled by then (its worker died, the
    # gateway never answered) is reconciled. Keep it above the gateway client's own timeout.
    PAYMENT_TIMEOUT_SECONDS = float(os.environ.get("PAYMENT_TIMEOUT_SECONDS", "30"))
    # An accepted confirmation whose payment never reached the gateway is retried until this long after
    # it was accepted; then the key is voided at the gateway and the hold released.
    PAYMENT_FINAL_SECONDS = float(os.environ.get("PAYMENT_FINAL_SECONDS", "900"))
    # Charges one `flask worker` keeps in flight at once (gateway calls are waiting, not computing).
    PAYMENT_CONCURRENCY = _int("PAYMENT_CONCURRENCY", 32)
    # The fake gateway refuses every charge when set, and always refuses emails containing "+refuse".
    FAKE_PAYMENT_REFUSE = _bool("FAKE_PAYMENT_REFUSE", False)
    FAKE_PAYMENT_DELAY_MS = _int("FAKE_PAYMENT_DELAY_MS", 0)
    # PAYMENT_GATEWAY=stripe (design section 11; docs/production.md says where each key comes from).
    STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY") or None
    STRIPE_PUBLISHABLE_KEY = os.environ.get("STRIPE_PUBLISHABLE_KEY") or None
    STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET") or None
    STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE") or "https://api.stripe.com"
    STRIPE_JS_URL = os.environ.get("STRIPE_JS_URL") or "https://js.stripe.com/v3/"
    # One Stripe call's read timeout, and the library's retries of a call that got no answer: together
    # they must stay well inside PAYMENT_TIMEOUT_SECONDS (3 x 8 s plus back-off < 30 s).
    STRIPE_TIMEOUT_SECONDS = float(os.environ.get("STRIPE_TIMEOUT_SECONDS", "8"))
    STRIPE_MAX_NETWORK_RETRIES = _int("STRIPE_MAX_NETWORK_RETRIES", 2)
    # How long a shopper has, once Pay was accepted, to authorise the card (3-D Secure, another card
    # after a decline); then the intent is canceled and the hold released.
    PAYMENT_ACTION_SECONDS = float(os.environ.get("PAYMENT_ACTION_SECONDS", "300"))
    # Test hook, ignored unless FLASHSALE_ENV=testing: faults around the Stripe client (stripe_faults.py).
    STRIPE_FAULT = os.environ.get("STRIPE_FAULT") or None
    # Outbound webhooks to the shop (design section 12; README "For the shop's developer"): endpoints,
    # comma-separated, and the Standard Webhooks secret (whsec_ + base64) every delivery is signed with.
    WEBHOOK_URLS = os.environ.get("WEBHOOK_URLS") or ""
    WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET") or None
    # One attempt's wait for an answer; the first retry's delay (jittered down to half), the longest
    # between two, and how long (from when it was first owed) a delivery is retried before it is failed.
    WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("WEBHOOK_TIMEOUT_SECONDS", "10"))
    WEBHOOK_RETRY_FIRST_SECONDS = float(os.environ.get("WEBHOOK_RETRY_FIRST_SECONDS", "10"))
    WEBHOOK_RETRY_CAP_SECONDS = float(os.environ.get("WEBHOOK_RETRY_CAP_SECONDS", "3600"))
    WEBHOOK_RETRY_HOURS = float(os.environ.get("WEBHOOK_RETRY_HOURS", "25"))
    # An attempt's lease: a delivery taken by a worker that died is due again this long after (keep it
    # above the timeout). Deliveries one `flask worker` sends at once, on threads apart from payments.
    WEBHOOK_LEASE_SECONDS = float(os.environ.get("WEBHOOK_LEASE_SECONDS", "60"))
    WEBHOOK_CONCURRENCY = _int("WEBHOOK_CONCURRENCY", 8)
    # Fault injection for tests and drills: timeout, lost or down for every charge (or per email:
    # "+timeout", "+lost", "+down"); see flashsale/gateways.py.
    FAKE_PAYMENT_FAULT = os.environ.get("FAKE_PAYMENT_FAULT") or None
    # Test hook, off by default and ignored unless FLASHSALE_ENV=testing: a sleep inside the product
    # lock, so the fault tests can make the Redis lock lapse under a slow holder (HoldPolicy).
    FAULT_DELAY_IN_LOCK_MS = _int("FAULT_DELAY_IN_LOCK_MS", 0)
    # Test hook, ignored unless FLASHSALE_ENV=testing: seconds this process's clock is off by
    # (inventory/clock.py host_time), for a web host whose clock is skewed.
    FAULT_CLOCK_SKEW_SECONDS = float(os.environ.get("FAULT_CLOCK_SKEW_SECONDS", "0"))


class TestConfig(Config):
    """Settings for the test suite: real PostgreSQL and Redis unless told otherwise."""

    ENV_NAME = "testing"
    TESTING = True
    SECRET_KEY = "test-secret"
    SQLALCHEMY_DATABASE_URI = normalise_database_url(
        os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_test")
    )
    REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    HOLD_SECONDS = 120
    RATELIMIT_ENABLED = False
    WTF_CSRF_ENABLED = False
    # Tests read the counters right after acting, often through Redis itself; batching has its own tests.
    METRICS_BATCH_SECONDS = 0
