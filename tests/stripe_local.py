"""A local Stripe for the tests: localstripe (PyPI), a stateful fake of Stripe's API and of Stripe.js.

The `localstripe` fixture starts one per test session on a free port, from scratch, and empties it
before each test that asks for it. Outside CI, a machine without localstripe skips those tests (and
says why); with CI=true it fails them. What it does and does not do is in issue 20 and
tests/test_stripe_payments.py; in short: no idempotency keys, no search, a declined intent cannot be
confirmed again, and only payment_intent.succeeded / payment_failed webhooks, once.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest

from tests.live_server import free_port, wait_until

IN_CI = os.environ.get("CI", "").lower() == "true"
SECRET_KEY = "sk_test_flashsale_local"
PUBLISHABLE_KEY = "pk_test_flashsale_local"
WEBHOOK_SECRET = "whsec_flashsale_local_secret"
# localstripe writes its whole store to /tmp/localstripe.pickle after every change, a file every
# instance on the machine shares; ours starts from scratch and never reads it, so it never writes it.
LAUNCH = ("import sys, localstripe.resources as r; r.Store.dump_to_disk = lambda self: None; "
          "from localstripe.server import start; sys.argv[0] = 'localstripe'; start()")


class LocalStripe:
    """One localstripe server: its URL, the app settings that point at it, and a few direct calls."""

    def __init__(self, log=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = None

    def start(self):
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-c", LAUNCH, "--port", str(self.port), "--from-scratch"],
                                        stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._answers, 20, interval=0.1, message=f"localstripe on {self.url}")
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def _answers(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"localstripe exited with {self.process.returncode}")
        try:
            return self.call("GET", "/v1/payment_intents?limit=1") is not None
        except OSError:
            return False

    def settings(self, **extra):
        """The configuration that sends an app's payments here (environment names, string values)."""
        return {"PAYMENT_GATEWAY": "stripe", "STRIPE_SECRET_KEY": SECRET_KEY,
                "STRIPE_PUBLISHABLE_KEY": PUBLISHABLE_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "STRIPE_API_BASE": self.url, "STRIPE_JS_URL": f"{self.url}/js.stripe.com/v3/",
                **{key: str(value) for key, value in extra.items()}}

    def call(self, method, path, form=None, key=SECRET_KEY):
        """One API call with the secret key (form-encoded, as Stripe takes them); the JSON answer."""
        data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else None
        headers = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()} if key else {}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return {"http_status": error.code, **json.loads(error.read() or b"{}")}

    def flush(self):
        """Forget every object (between tests)."""
        self.call("DELETE", "/_config/data")

    def card(self, number):
        """A PaymentMethod made from a raw test card number (as Stripe.js makes one); its id."""
        made = self.call("POST", "/v1/payment_methods", {
            "type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": "2034",
            "card[cvc]": "123"})
        return made["id"]

    def intents(self):
        """Every PaymentIntent it holds (paged through)."""
        found, after = [], None
        while True:
            page = self.call("GET", "/v1/payment_intents?limit=100" + (f"&starting_after={after}" if after else ""))
            found += page["data"]
            if not page.get("has_more") or not page["data"]:
                return found
            after = page["data"][-1]["id"]

    def intent(self, intent_id):
        return self.call("GET", f"/v1/payment_intents/{intent_id}")

    def authenticate(self, intent_id, client_secret, success=True):
        """Finish (or fail) 3-D Secure as its Stripe.js stand-in does, with the publishable key."""
        return self.call("POST", f"/v1/payment_intents/{intent_id}/_authenticate?success={str(success).lower()}",
                         {"client_secret": client_secret, "key": PUBLISHABLE_KEY}, key=None)

    def send_webhooks_to(self, url, events=None):
        """Deliver its webhooks to url, signed with WEBHOOK_SECRET."""
        form = {"url": url, "secret": WEBHOOK_SECRET}
        if events:
            form["events[]"] = events
        self.call("POST", "/_config/webhooks/flashsale", form)

    def events(self):
        return self.call("GET", "/v1/events?limit=100")["data"]


def sign(payload, secret=WEBHOOK_SECRET, at=None):
    """A Stripe-Signature header for payload (bytes), signed at `at` (epoch seconds, default now)."""
    at = int(time.time() if at is None else at)
    digest = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def event_payload(event):
    """An event's body as localstripe sends it."""
    return json.dumps(event, indent=2, sort_keys=True).encode()


@pytest.fixture(scope="session")
def localstripe_server():
    """One localstripe for the session, or a skip (outside CI) when it is not installed."""
    try:
        import localstripe  # noqa: F401
    except ImportError as missing:
        if IN_CI:
            pytest.fail(f"CI=true but localstripe cannot be imported ({missing}): pip install -r requirements-dev.txt")
        pytest.skip(f"localstripe is not installed ({missing}): pip install -r requirements-dev.txt")
    server = LocalStripe(log=os.environ.get("LOCALSTRIPE_LOG")).start()
    yield server
    server.stop()


@pytest.fixture
def localstripe(localstripe_server):
    """The session's localstripe, emptied for this test."""
    localstripe_server.flush()
    return localstripe_server


def raw_post(url, payload, headers):
    """POST exact bytes (a webhook's body must arrive as it was signed): (status, JSON body)."""
    request = urllib.request.Request(url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return SimpleNamespace(status=status, body=json.loads(raw or b"{}"))
