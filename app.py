"""Entry point: `flask --app app run`, `gunicorn app:app`."""

from flashsale import create_app

app = create_app()
