"""A real HTTP endpoint for webhook tests: it records every POST and answers what the test sets."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes of base64: a test secret


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that keeps (headers, body) of each POST and answers
    `status` (change it at any time); `url` is where to point WEBHOOK_URLS."""

    def __init__(self, status=200, delay=0.0):
        self.status, self.delay = status, delay  # what to answer, and how long to take over it
        self.received = []
        self.in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.in_flight += 1
                    answer, delay = receiver.status, receiver.delay
                try:
                    time.sleep(delay)  # a slow endpoint: the sender is mid-delivery meanwhile
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        receiver.received.append((headers, body, answer))
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("location", "/moved")  # which GET answers 200
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def posts(self):
        """[(headers, body)] of what arrived so far (answered by now)."""
        with self._lock:
            return [(headers, body) for headers, body, _ in self.received]

    def verified(self, secret=SECRET, accepted_only=False):
        """[(webhook-id, event)] of every POST (or only those answered 2xx), each verified with the
        standardwebhooks library (raises on any that does not verify)."""
        with self._lock:
            received = list(self.received)
        return [(headers["webhook-id"], Webhook(secret).verify(body, headers)) for headers, body, answer in received
                if not accepted_only or 200 <= answer < 300]

    def wait_for(self, condition, timeout=30):
        """Poll until condition(self) is true, or fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: condition not met in {timeout} s; got {len(self.posts())} posts")
            time.sleep(0.05)
