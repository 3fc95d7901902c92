"""`flask simulate`: play a crowd of buyers against a running server and report what each of them got.

Every buyer is a distinct email (and, for servers that trust one proxy hop, a distinct X-Forwarded-For
address) that arrives at once (burst) or spread over a ramp, asks for a hold through the JSON API, and if
it wins either confirms, abandons (lets the hold lapse) or releases it. Buyers answered 503/429 retry after
Retry-After when their share says so, with the same Idempotency-Key, as a well-behaved client would.

The pure parts (buyer plans, percentiles, the report and its table) take plain values, so they are tested
without a server; `play` is the only part that talks HTTP.
"""
