"""Schemathesis against the production web tier (design section 14): every operation of GET
/api/openapi.json, positive and negative cases, every check, and nothing found.

The app runs as in production (webserver.py: granian, two processes, and `flask worker`), with the rate
limits on but raised out of the way, on a live sale (`ps5`) and a live waiting-room sale (`ps5q`) that
tests/schemathesis.toml points the hold and queue operations at. Checks: all of schemathesis's, with
`positive_data_acceptance` replaced by tests/schemathesis_hooks.py's copy, which knows the two refusals
of schema-valid data the contract makes (a reused Idempotency-Key, a quantity sent as 2.0).

SCHEMATHESIS_MAX_EXAMPLES (default 100) and SCHEMATHESIS_SEED (default 23) tune a run; the case count is
printed (the README quotes it).
"""

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from config import TestConfig
from flashsale.api import openapi
from flashsale.inventory import catalog
from flashsale.models import Product
from tests.faults import DATABASE_URL
from tests.live_server import ROOT, LiveServer

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100"))
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "23"))
RAISED = "100000/second"


# About 1-2.5 minutes at 100 examples on 2 shared cores (more under other runs' load): past the suite's 300 s.
@pytest.mark.timeout(900)
def test_schemathesis_finds_nothing_against_the_running_app(app, make_product, session, tmp_path):
    make_product(slug="ps5", total_stock=100_000, max_per_customer=10, duration=timedelta(hours=2))
    line = make_product(slug="ps5q", total_stock=100_000, max_per_customer=10, duration=timedelta(hours=2))
    session.execute(update(Product).where(Product.id == line).values(waiting_room=True))
    session.commit()
    catalog.forget()
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=8, with_worker=True,
                    log=tmp_path / "web.log", RATELIMIT_ENABLED="true", RATELIMIT_HOLD_PER_ADDRESS=RAISED,
                    RATELIMIT_HOLD_PER_EMAIL=RAISED) as server:
        run = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
             f"{server.url}/api/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
             # One worker: schemathesis's threads share CPython's ast module, which 3.11 does not guard.
             "--workers", "1", "--no-color", "--report", "junit", "--report-dir", str(tmp_path)],
            env={**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"},
            capture_output=True, text=True, timeout=840, cwd=tmp_path)
    output = run.stdout + run.stderr
    cases = re.search(r"(\d+) generated", output)
    print(f"schemathesis: {cases.group(1) if cases else '?'} cases, max-examples {MAX_EXAMPLES}, seed {SEED}")
    assert run.returncode == 0, output[-12000:]
    # Every operation of the document but the document itself (schemathesis does not fetch its own
    # source as a test case).
    operations = sum(len(item) for path, item in openapi.document(app.config)["paths"].items()
                     if path != "/api/openapi.json")
    assert cases and int(cases.group(1)) >= operations * MAX_EXAMPLES // 2, output[-3000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}\b", output), f"{phase} did not pass:\n{output[-3000:]}"
    assert f"Tested: {operations}" in output  # every operation of the document


class _Answer:
    def __init__(self, status, code, fields=None):
        self.status_code = status
        self._body = {"error": {"code": code, "message": "...", **({"fields": fields} if fields else {})}}

    def json(self):
        return self._body


class _Case:
    def __init__(self, headers=None, body=None):
        self.headers, self.body = headers, body


def test_the_replaced_acceptance_check_excuses_only_the_contracts_two_refusals():
    from tests.schemathesis_hooks import _float_quantity_refused, _reused_key_refused

    keyed = _Case({"Idempotency-Key": "0"}, {"email": "a@b.co"})
    assert _reused_key_refused(_Answer(422, "idempotency_mismatch"), keyed)
    assert not _reused_key_refused(_Answer(422, "idempotency_mismatch"), _Case({}, {"email": "a@b.co"}))
    assert not _reused_key_refused(_Answer(422, "invalid", {"email": "bad"}), keyed)
    floated = _Case({}, {"email": "a@b.co", "quantity": 2.0})
    assert _float_quantity_refused(_Answer(422, "invalid", {"quantity": "Must be a whole number."}), floated)
    assert not _float_quantity_refused(_Answer(422, "invalid", {"quantity": "x", "email": "y"}), floated)
    assert not _float_quantity_refused(_Answer(422, "invalid", {"quantity": "x"}),
                                       _Case({}, {"email": "a@b.co", "quantity": 2.5}))
    assert not _float_quantity_refused(_Answer(422, "invalid", {"quantity": "x"}),
                                       _Case({}, {"email": "a@b.co", "quantity": 2}))
