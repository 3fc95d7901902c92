"""The laptop runner: `python3 dev.py run` and `python3 dev.py test`, with an embedded Redis.

Not imported by the app: production never loads this package.
"""
