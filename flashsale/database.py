"""The database: SQLAlchemy and migrations, and on SQLite writers that queue instead of failing."""

from sqlalchemy import event

from .extensions import db, migrate

# An execution option for a connection that only reads (the audit): on SQLite it begins deferred, so its
# first read fixes a snapshot that writers, in WAL mode, never wait for.
READ_SNAPSHOT = "flashsale_read_snapshot"


def init_app(app):
    """Bind db and migrations to the app; on SQLite, make writers queue, not fail."""
    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True, compare_type=True)
    if app.config["ENV_NAME"] == "testing":
        from .inventory import clock

        clock.skew_seconds = app.config["FAULT_CLOCK_SKEW_SECONDS"]  # a web host whose clock is off
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        with app.app_context():
            _serialise_sqlite_writers(db.engine)


def _serialise_sqlite_writers(engine):
    """SQLite has no row locks: BEGIN IMMEDIATE takes its single writer lock up front, so two
    transactions queue (busy timeout) instead of failing when both try to upgrade to writers. The
    batch transaction on SQLite (placement.SQLiteBatchTransaction) relies on this as its row lock."""

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
        read_only = connection.get_execution_options().get(READ_SNAPSHOT)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
