"""The last audit's result, kept in Redis so that every process (the dashboard's included) reads one
truth: when it read the database, what it covered, whether it passed, how many breaches of each kind.
Counts only: a breach's sample names holds, whose ids are capabilities, and stays in the audit's output."""

import json

from ... import keys


def summary(report):
    """A report as the JSON-ready record the dashboard shows."""
    return {"at": report.at.isoformat(), "scope": report.scope, "seconds": round(report.seconds, 3),
            "passed": report.passed, "breaches": report.count, "by_invariant": report.by_invariant()}


def record(redis, report):
    """Keep `report` as the last audit (one SET: readers see the old record or the new one, whole)."""
    redis.set(keys.last_audit(), json.dumps(summary(report)))


def read(redis):
    """The last recorded audit (summary's fields), or None when none has been recorded."""
    raw = redis.get(keys.last_audit())
    return json.loads(raw) if raw else None
