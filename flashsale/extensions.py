"""Extension objects, created here and bound to the app in create_app (this kills circular imports)."""

import redis
from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
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


def limiter_storage_uri(redis_url):
    """Translate a redis-py URL into the `limits` storage URI naming the same server."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://"):]
    return redis_url


class RedisStore:
    """Each app's Redis client and RQ queue, shared by routes, metrics and the lock.

    Like Flask-SQLAlchemy, the state lives on the app (app.extensions), so tests can build a second app on
    another Redis without rebinding the first.
    """

    def init_app(self, app):
        """Connect to REDIS_URL (lazily: nothing is sent until the first command)."""
        timeout = app.config["REDIS_SOCKET_TIMEOUT"]
        client = redis.Redis.from_url(
            app.config["REDIS_URL"],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        app.extensions["flashsale_redis"] = (client, Queue(app.config["QUEUE_NAME"], connection=client))

    @property
    def client(self):
        """The current app's Redis client."""
        return current_app.extensions["flashsale_redis"][0]

    @property
    def queue(self):
        """The current app's RQ queue."""
        return current_app.extensions["flashsale_redis"][1]


redis_store = RedisStore()
