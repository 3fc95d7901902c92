"""Fault injection around the real Stripe client, for the faults a local Stripe cannot stage.

STRIPE_FAULT (honoured only when FLASHSALE_ENV=testing) is a comma-separated list of CALL=MODE, where
CALL is create, update, confirm, capture, cancel, refund or retrieve, and MODE is

    lost      the call reaches Stripe and does what it does, then its answer is lost (no answer)
    timeout   the call never reaches Stripe (no answer, nothing done)
    slow:N    every such call waits N seconds, then goes (a window to SIGKILL a worker in)
    down      every such call fails without reaching Stripe

lost and timeout hit the first such call of each process only, so a retry (the library's, or a
reconciler's) gets through. Each shows up as the library's own APIConnectionError.
"""

import re
import threading
import time

import stripe

MODES = re.compile(r"^(lost|timeout|down|slow:\d+(\.\d+)?)$")
CALLS = ("create", "update", "confirm", "capture", "cancel", "refund", "retrieve")


def faults_from_config(config):
    """((call, mode), ...) from STRIPE_FAULT, or () outside testing or when unset."""
    text = config.get("STRIPE_FAULT") or ""
    if not text or config.get("ENV_NAME") != "testing":
        return ()
    return parse(text)


def parse(text):
    """'capture=lost,create=slow:2' -> (('capture', 'lost'), ('create', 'slow:2')), or ValueError."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        call, _, mode = item.partition("=")
        if call not in CALLS or not MODES.match(mode):
            raise ValueError(f"STRIPE_FAULT item {item!r}: use CALL=MODE, CALL one of {', '.join(CALLS)}, "
                             f"MODE lost, timeout, down or slow:SECONDS")
        faults.append((call, mode))
    return tuple(faults)


def call_name(method, url):
    """Which PaymentIntent call a request is ('confirm', 'capture', ...), or None."""
    path = url.split("?", 1)[0]
    if path.endswith("/v1/refunds"):
        return "refund"
    found = re.search(r"/v1/payment_intents(?:/([^/]+))?(?:/(confirm|capture|cancel))?$", path)
    if not found:
        return None
    if found.group(2):
        return found.group(2)
    if not found.group(1):
        return "create" if method.lower() == "post" else None
    return "update" if method.lower() == "post" else "retrieve"


class FaultyRequestsClient(stripe.RequestsClient):
    """Stripe's own requests-based HTTP client with the configured faults in front of it."""

    def __init__(self, faults, **kwargs):
        super().__init__(**kwargs)
        self.faults = dict(faults)
        self._spent = set()
        self._lock = threading.Lock()

    def request(self, method, url, headers, post_data=None):
        mode = self._fault(call_name(method, url))
        if mode in ("timeout", "down"):
            raise stripe.APIConnectionError(f"fault injected: {method} {url} never left", should_retry=True)
        if mode and mode.startswith("slow:"):
            time.sleep(float(mode.split(":", 1)[1]))
        answer = super().request(method, url, headers, post_data)
        if mode == "lost":
            raise stripe.APIConnectionError(f"fault injected: the answer to {method} {url} was lost",
                                            should_retry=True)
        return answer

    def _fault(self, call):
        mode = self.faults.get(call)
        if mode is None or mode == "down" or mode.startswith("slow:"):
            return mode
        with self._lock:
            if call in self._spent:
                return None
            self._spent.add(call)
        return mode
