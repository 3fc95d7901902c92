"""A client generated from GET /api/openapi.json (openapi-python-client, as the README shows) places,
reads and confirms holds and reads refusals: the document is good enough to build on."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def test_a_generated_python_client_buys_and_hears_refusals(app, client, make_product, tmp_path, monkeypatch):
    make_product(slug="ps5", total_stock=1, max_per_customer=1)
    (tmp_path / "openapi.json").write_text(json.dumps(client.get("/api/openapi.json").get_json()))
    generated = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", "openapi.json", "--output-path",
         "flashsale_client", "--meta", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert generated.returncode == 0, generated.stdout + generated.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    api = importlib.import_module("flashsale_client")
    create_hold = importlib.import_module("flashsale_client.api.default.create_hold")
    confirm_hold = importlib.import_module("flashsale_client.api.default.confirm_hold")
    get_product = importlib.import_module("flashsale_client.api.default.get_product")
    models = importlib.import_module("flashsale_client.models")

    # The generated client over the app itself (no server needed): httpx's WSGI transport.
    shop = api.Client(base_url="http://localhost", httpx_args={"transport": httpx.WSGITransport(app=app)})
    product = get_product.sync(ref="ps5", client=shop)
    assert isinstance(product, models.Product) and product.available == 1
    hold = create_hold.sync(ref="ps5", client=shop, body=models.HoldRequest(email="gen@example.com"),
                            idempotency_key="gen-1")
    assert isinstance(hold, models.Hold) and hold.status.value == "PENDING" and hold.quantity == 1
    confirmed = confirm_hold.sync(hold_id=hold.id, client=shop)
    assert isinstance(confirmed, models.Hold) and confirmed.status.value == "CONFIRMING"
    assert confirmed.payment.status.value == "processing"
    refused = create_hold.sync_detailed(ref="ps5", client=shop, body=models.HoldRequest(email="late@example.com"))
    assert refused.status_code == 409 and refused.parsed.error.code == "sold_out"
    for name in [m for m in sys.modules if m.startswith("flashsale_client")]:
        monkeypatch.delitem(sys.modules, name)
