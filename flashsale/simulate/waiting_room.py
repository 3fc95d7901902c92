"""`flask simulate` on a waiting-room product: each buyer joins the line, follows its ticket, and buys
when admitted; the report says how fair the line was, how long people waited, and who got an answer.

Fairness compares the order in which the line admitted shoppers with the order in which they arrived
(both by the server's clock, from the ticket): among shoppers who joined after the opening the two
should agree (Spearman's rho near 1, nobody overtaken); among those who joined before it, admission
order should be unrelated to arrival order (rho near 0: reloading early bought nothing).
"""

import asyncio
import time
from datetime import datetime

from ..metrics import percentile

FINAL = {"admitted", "sold_out", "closed"}


async def follow_ticket(request, url, product, email, address, deadline_s):
    """Join the line and poll (at the pace the ticket suggests) until a final state or the deadline.

    `request(method, url, **kwargs)` -> (status, body, headers, latency_ms), as simulate's client.
    Returns the last ticket seen (None when joining never got an answer).
    """
    headers = {"X-Forwarded-For": address}
    ticket = None
    for _ in range(5):
        status, body, _, _ = await request("POST", f"{url}/api/products/{product}/queue",
                                           json={"email": email}, headers=headers)
        if status in (200, 201):
            ticket = body
            break
        await asyncio.sleep(1)
    if ticket is None:
        return None
    started = time.monotonic()
    while ticket.get("state") not in FINAL and time.monotonic() - started < deadline_s:
        await asyncio.sleep(ticket.get("poll_seconds", 2))
        status, body, _, _ = await request("GET", f"{url}/api/queue/{ticket['id']}", headers=headers)
        if status == 200:
            ticket = body
    return ticket


def _when(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def ranks(values):
    """Ranks 1..n of values, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(xs, ys):
    """Spearman's rank correlation (Pearson's on the ranks, so ties are fair); None under 3 pairs."""
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return round(cov / var, 3) if var else None


def line_report(results, sale_starts_at):
    """The waiting-room part of the report: outcomes, fairness, waits, definite answers."""
    tickets = [r.ticket for r in results if r.ticket is not None]
    states = {}
    for ticket in tickets:
        states[ticket["state"]] = states.get(ticket["state"], 0) + 1
    opens = _when(sale_starts_at)
    admitted = [t for t in tickets if t["state"] == "admitted" and t.get("admitted_at")]
    early = [t for t in admitted if _when(t["joined_at"]) < opens]
    late = [t for t in admitted if _when(t["joined_at"]) >= opens]
    waits = sorted(_when(t["admitted_at"]) - max(_when(t["joined_at"]), opens) for t in admitted)
    overtaken = 0
    if late:  # shoppers admitted before someone who arrived ahead of them (after the opening)
        by_arrival = sorted(late, key=lambda t: _when(t["joined_at"]))
        latest = float("-inf")
        for ticket in by_arrival:
            admitted_at = _when(ticket["admitted_at"])
            overtaken += admitted_at < latest
            latest = max(latest, admitted_at)
    answered = sum(1 for r in results if r.definite)
    return {
        "tickets": len(tickets), "states": states,
        "fairness": {
            "after_opening_rho": spearman([_when(t["joined_at"]) for t in late],
                                          [_when(t["admitted_at"]) for t in late]),
            "after_opening_overtaken": overtaken, "after_opening_admitted": len(late),
            "before_opening_rho": spearman([_when(t["joined_at"]) for t in early],
                                           [_when(t["admitted_at"]) for t in early]),
            "before_opening_admitted": len(early),
        },
        "wait_s": {f"p{q}": None if not waits else round(percentile(waits, q), 2) for q in (50, 95, 99)}
        | {"max": round(waits[-1], 2) if waits else None},
        "buyers": len(results), "definite_answers": answered,
        "definite_share": round(answered / len(results), 4) if results else None,
    }


def line_text(line):
    """The rows `flask simulate` prints for a waiting room."""
    fair, wait = line["fairness"], line["wait_s"]
    states = " · ".join(f"{k} {v}" for k, v in sorted(line["states"].items())) or "-"
    return [
        ("waiting room", f"{line['tickets']} tickets: {states}"),
        ("fairness", f"after the opening rho {fair['after_opening_rho']} over {fair['after_opening_admitted']}"
                     f" admitted ({fair['after_opening_overtaken']} overtaken); before it rho "
                     f"{fair['before_opening_rho']} over {fair['before_opening_admitted']} (0 = a fair draw)"),
        ("wait in line", " · ".join(f"{k} {v} s" for k, v in wait.items())),
        ("definite answers", f"{line['definite_answers']} of {line['buyers']} buyers "
                             f"({100 * (line['definite_share'] or 0):.1f} %)"),
    ]
