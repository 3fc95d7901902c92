"""Request ids and JSON logs (web/logs.py): every answer names its request in X-Request-Id, and with
LOG_FORMAT=json the web server and the worker write one JSON object per line, the request's lines and
the payment job it caused under the same id."""

import json
import re
import subprocess
import urllib.request

from config import TestConfig
from tests.faults import DATABASE_URL, hold
from tests.live_server import BIN, ROOT, LiveServer, stop_process, wait_until


def json_lines(path):
    """Every line of a log file as a JSON object (a line that is not one fails the test)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def test_every_answer_names_its_request_and_a_proxys_id_is_kept_when_well_formed(client, make_product):
    make_product(slug="ps5")
    fresh = [client.get(path).headers["X-Request-Id"] for path in ("/api/products/ps5", "/healthz", "/nowhere")]
    assert len(set(fresh)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in fresh)
    assert client.get("/healthz", headers={"X-Request-Id": "lb-7f3a.19:x"}).headers["X-Request-Id"] == "lb-7f3a.19:x"
    for forged in ("short", "has space in it", "x" * 129, "quote\"inside"):
        kept = client.get("/healthz", headers={"X-Request-Id": forged}).headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", kept), forged


def test_json_logs_carry_the_request_id_from_the_web_server_into_the_payment_job(app, make_product, tmp_path):
    make_product(slug="ps5", total_stock=1)
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=4, log=web_log,
                    LOG_FORMAT="json") as server:
        with open(worker_log, "ab") as output:
            worker = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker"], cwd=ROOT, env=server.env,
                                      start_new_session=True, stdout=output, stderr=output)
        try:
            placed = hold(server.url, "ps5", "buyer@example.com", **{"X-Request-Id": "place-0001"})
            assert placed.status == 201 and placed.headers["X-Request-Id"] == "place-0001"
            refused = hold(server.url, "ps5", "late@example.com")  # sold out: maybe the gate's answer
            assert refused.code == "sold_out" and re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-Id"])
            confirm = urllib.request.Request(f"{server.url}/api/holds/{placed.body['id']}/confirm", method="POST",
                                             headers={"X-Request-Id": "confirm-0001"})
            with urllib.request.urlopen(confirm, timeout=10) as answer:
                assert answer.status == 202 and answer.headers["X-Request-Id"] == "confirm-0001"

            def paid():
                return [r for r in json_lines(worker_log)
                        if r.get("request_id") == "confirm-0001" and r.get("message") == "payment taken: confirmed"]

            [payment] = wait_until(paid, 30, message="the payment job's log line")
            assert payment["job_id"] == f"pay-{placed.body['id']}" and payment["level"] == "INFO"
        finally:
            stop_process(worker)
    web = json_lines(web_log)  # every line of the web server's output, granian's own included
    access = {r["request_id"]: r for r in web if r.get("logger") == "flashsale.access"}
    assert access["place-0001"]["status"] == 201 and access["place-0001"]["path"] == "/api/products/ps5/holds"
    assert access["confirm-0001"]["status"] == 202 and access["confirm-0001"]["method"] == "POST"
    assert access[refused.headers["X-Request-Id"]]["status"] == 409
    assert all("@example.com" not in json.dumps(record) for record in web)  # emails stay masked
