"""The README's receiver example, run as written against real signed deliveries from flashsale."""

import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from flashsale.inventory import deliveries
from flashsale.worker import webhooks
from tests.paying import confirm_and_pay
from tests.webhook_receiver import SECRET

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_receiver():
    """The python block after the README's receiver-example marker, executed: its namespace."""
    text = README.read_text()
    code = re.search(r"<!-- the receiver example[^>]*-->\s*```python\n(.*?)```", text, re.S).group(1)
    namespace = {"__name__": "readme_receiver"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


@pytest.fixture
def receiver(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    namespace = readme_receiver()
    shipped = []
    namespace["ship"] = shipped.append
    server = make_server("127.0.0.1", 0, namespace["app"], threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/flashsale", shipped
    finally:
        server.shutdown()


def test_the_readme_receiver_verifies_ships_once_and_refuses_a_forgery(app, session, redis, shop, make_product,
                                                                       receiver, monkeypatch):
    url, shipped = receiver
    monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", (url,))
    monkeypatch.setitem(app.config, "WEBHOOK_SECRET", SECRET)
    make_product()
    hold_id = shop.place("buyer@x.io").id
    confirm_and_pay(session, redis, hold_id)
    assert webhooks.deliver_webhooks() == 1
    assert [(order["id"], order["email"]) for order in shipped] == [(hold_id, "buyer@x.io")]
    [status] = deliveries.status(session)
    assert status.delivered == 1
    deliveries.fan_out(session, [url])
    # A retry of the same event (same webhook-id) is answered 2xx and not shipped twice.
    session.execute(deliveries.D.__table__.update().values(state="pending", next_attempt_at=deliveries.D.created_at))
    session.commit()
    assert webhooks.deliver_webhooks() == 1 and len(shipped) == 1
    # Signed with another secret, or altered: refused.
    assert webhooks.post(url, "msg_forged", '{"type":"order.confirmed","data":{}}',
                         "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY", 5) == "HTTP 400"
    assert len(shipped) == 1
