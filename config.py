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

    ADMIN_TOKEN = os.environ.get("ADMIN_TOKEN") or None
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
    # Fault injection for tests and drills: timeout, lost or down for every charge (or per email:
    # "+timeout", "+lost", "+down"); see flashsale/gateways.py.
    FAKE_PAYMENT_FAULT = os.environ.get("FAKE_PAYMENT_FAULT") or None
    # Test hook, off by default and ignored unless FLASHSALE_ENV=testing: a sleep inside the product
    # lock, so the fault tests can make the Redis lock lapse under a slow holder (HoldPolicy).
    FAULT_DELAY_IN_LOCK_MS = _int("FAULT_DELAY_IN_LOCK_MS", 0)


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
