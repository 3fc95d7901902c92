"""The database and Redis connections: SQLAlchemy, migrations, Redis client and RQ queue."""

from sqlalchemy import event

from .extensions import csrf, db, migrate, redis_store


def init_app(app):
    """Bind db, migrations, CSRF and Redis to the app; on SQLite, make writers queue, not fail."""
    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True, compare_type=True)
    csrf.init_app(app)
    redis_store.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        with app.app_context():
            _serialise_sqlite_writers(db.engine)


def _serialise_sqlite_writers(engine):
    """SQLite has no row locks: BEGIN IMMEDIATE takes its single writer lock up front, so two
    transactions queue (busy timeout) instead of failing when both try to upgrade to writers. The
    line's batch transaction on SQLite (placement.SQLiteBatchTransaction) relies on this as its row lock."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
