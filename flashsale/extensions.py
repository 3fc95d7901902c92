"""Extension objects, created here and bound to the app in create_app (this kills circular imports)."""

import redis
from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue
from sqlalchemy import MetaData

# Named constraints let Alembic alter and drop them on SQLite (batch mode) and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)


def sentinel_addresses(text):
    """REDIS_SENTINELS ("host:port,host:port") as [(host, port)]."""
    addresses = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.rpartition(":")
        addresses.append((host or item, int(port) if host else 26379))
    return addresses


def replicas_to_wait(config):
    """How many replicas must hold a write that a failover must not lose (REDIS_WAIT_REPLICAS)."""
    wanted = config.get("REDIS_WAIT_REPLICAS", -1)
    if wanted is None or wanted < 0:
        return 1 if config.get("REDIS_SENTINELS") else 0
    return wanted


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary the sentinels name, that leaves a primary refusing writes for lack of
    replicas (NOREPLICAS, with min-replicas-to-write) as redis-py already leaves a demoted one (READONLY).

    Such a primary is cut off, or was just replaced: a second failover can leave the first promoted
    replica alone as a primary for seconds. The error is a ConnectionError, so the request answers 503
    (or redis-py retries it) and the next connection asks the sentinels again. Nothing was written: the
    refusal comes before a command's (or a script's first) write.
    """

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as error:
            if str(error).startswith("NOREPLICAS"):
                self.disconnect()
                raise RedisConnectionError("the primary has no replica in sync (NOREPLICAS)") from error
            raise


class RedisStore:
    """Each app's Redis client and RQ queue, shared by routes, metrics and the lock.

    Like Flask-SQLAlchemy, the state lives on the app (app.extensions), so tests can build a second app on
    another Redis without rebinding the first.
    """

    def init_app(self, app):
        """Connect to REDIS_URL or the sentinels' primary (lazily: nothing is sent until the first command)."""
        client = self.connect(app.config)
        app.extensions["flashsale_redis"] = (client, Queue(app.config["QUEUE_NAME"], connection=client))

    @staticmethod
    def connect(config, **overrides):
        """A new client for the configured Redis (every process's clients are made here).

        With REDIS_SENTINELS the client asks the sentinels for the current primary whenever it opens a
        connection, and a connection that meets a demoted primary (READONLY) is dropped and reopened on
        the new one (redis-py's SentinelManagedConnection); REDIS_URL is then not read at all.
        """
        timeout = config["REDIS_SOCKET_TIMEOUT"]
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                   "health_check_interval": 30, **overrides}
        if not config.get("REDIS_SENTINELS"):
            return redis.Redis.from_url(config["REDIS_URL"], **options)
        password = config.get("REDIS_PASSWORD") or None
        sentinel = Sentinel(sentinel_addresses(config["REDIS_SENTINELS"]),
                            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                             "password": password})
        return sentinel.master_for(config["REDIS_SENTINEL_SERVICE"], db=config.get("REDIS_DB", 0),
                                   password=password, connection_class=PrimaryConnection, **options)

    @property
    def client(self):
        """The current app's Redis client."""
        return current_app.extensions["flashsale_redis"][0]

    @property
    def queue(self):
        """The current app's RQ queue."""
        return current_app.extensions["flashsale_redis"][1]


redis_store = RedisStore()
