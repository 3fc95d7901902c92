"""What `python3 dev.py test` and `python3 dev.py run` do once the virtualenv is ready."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = ROOT / "instance"
DEFAULT_TEST_DATABASE = "postgresql://postgres@127.0.0.1:5432/flashsale_test"
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/15"


def test(args):
    """Run pytest on PostgreSQL and Redis: the ones configured, the local ones, or SQLite and an embedded
    Redis when none answers. TEST_SERVERS=embedded picks the latter on purpose (CI's embedded run)."""
    env = dict(os.environ)
    embedded_only = env.get("TEST_SERVERS", "").lower() == "embedded"
    if embedded_only:
        for name in ("TEST_DATABASE_URL", "TEST_REDIS_URL"):
            if env.pop(name, None):
                print(f"TEST_SERVERS=embedded: ignoring {name}", flush=True)
        env["TEST_DATABASE_URL"] = _sqlite_test_database()
    if "TEST_DATABASE_URL" not in env:
        env["TEST_DATABASE_URL"] = _test_database()
    embedded = None
    if "TEST_REDIS_URL" not in env:
        if not embedded_only and _redis_answers(DEFAULT_TEST_REDIS):
            env["TEST_REDIS_URL"] = DEFAULT_TEST_REDIS
        else:
            from .embedded_redis import EmbeddedRedis

            embedded = EmbeddedRedis(INSTANCE / "test-redis").start()
            env["TEST_REDIS_URL"] = embedded.url
    print(f"tests on {env['TEST_DATABASE_URL']} and {env['TEST_REDIS_URL']}", flush=True)
    try:
        return subprocess.call([sys.executable, "-m", "pytest", *args], env=env, cwd=ROOT)
    finally:
        if embedded:
            embedded.stop()


def _test_database():
    """The local PostgreSQL's flashsale_test database (created if missing), else a SQLite file."""
    try:
        import psycopg2

        admin = psycopg2.connect(DEFAULT_TEST_DATABASE.rsplit("/", 1)[0] + "/postgres",
                                 connect_timeout=3)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'flashsale_test'")
            if cursor.fetchone() is None:
                cursor.execute("CREATE DATABASE flashsale_test")
        admin.close()
        return DEFAULT_TEST_DATABASE
    except Exception as error:  # noqa: BLE001
        if os.environ.get("CI", "").lower() == "true":
            raise SystemExit(f"CI=true but PostgreSQL is not reachable: {error} "
                             "(TEST_SERVERS=embedded runs on SQLite on purpose)") from None
        print("PostgreSQL not reachable: running on SQLite; the tests that need PostgreSQL skip, "
              "each saying why", flush=True)
        return _sqlite_test_database()


def _sqlite_test_database():
    """The SQLite file the tests use when they run without PostgreSQL."""
    INSTANCE.mkdir(exist_ok=True)
    return f"sqlite:///{INSTANCE / 'test.db'}"


def _redis_answers(url):
    import redis

    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "test":
        return test(args)
    if command == "run":
        from .quickstart import run

        return run(args)
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
