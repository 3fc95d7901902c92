"""Entry point: `flask --app app run`, `python webserver.py app:app`."""

from flashsale import create_app

app = create_app()
