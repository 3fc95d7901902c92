"""No test, benchmark, seed or screenshot script compares a fixed date with a real clock.

A fixed moment in a test that reaches the database clock, a Redis TTL or the process clock passes on
the day it is written and fails some day after (issue 9: a deadline built from 2026-11-22 turned CI red
ten days later). Times are built from the clock at run time; a literal date is allowed only in a pure
test that passes it in explicitly, on a line marked `fixed-date-ok`.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("seeds/*"),
           ROOT / "docs" / "take_screenshots.py", *ROOT.glob("flashsale/**/*.py")]
LITERAL_DATE = re.compile(r"datetime\(\s*\d{4}\s*,|[\"']\d{4}-\d{2}-\d{2}[T ]?|date\(\s*\d{4}\s*,")
MARK = "fixed-date-ok"


def literal_dates():
    """(path, line number, line) of every unmarked literal date in the scanned files."""
    found = []
    for path in SCANNED:
        if path == Path(__file__) or not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LITERAL_DATE.search(line) and MARK not in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_literal_dates_outside_pure_tests():
    assert literal_dates() == []


def test_the_scan_would_catch_the_bug_that_broke_ci():
    assert LITERAL_DATE.search("NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)")
    assert LITERAL_DATE.search('"hold_expires_at": "2099-01-01T00:00:00Z"')
    assert not LITERAL_DATE.search("now = datetime.now(timezone.utc)")
