"""What the crowd got, as a JSON-ready report and as the table `flask simulate` prints (pure: no I/O)."""

from collections import Counter
from datetime import datetime

from ..metrics import percentile
from .waiting_room import line_text

TERMINAL = {"CONFIRMED", "EXPIRED", "RELEASED"}
CLOCK_MARGIN_S = 2.0  # holds this close to expiry are not counted as kept (client/server clock skew)


def time_to_sell_out(results, units_available):
    """Seconds until the holds won covered every unit available at the start (None: never)."""
    wins = sorted((r.attempts[-1].answered_at, r.hold.get("quantity", 1))
                  for r in results if r.hold)
    taken = 0
    for answered_at, quantity in wins:
        taken += quantity
        if units_available and taken >= units_available:
            return answered_at
    return None


def kept_units(holds, read_at):
    """Units our holds still take at read_at: confirmed or being paid for, or pending and not yet
    lapsed by then."""
    kept = 0
    for hold in holds.values():
        if hold["status"] in ("CONFIRMED", "CONFIRMING"):
            kept += hold["quantity"]
        elif hold["status"] == "PENDING":
            expires = datetime.fromisoformat(hold["hold_expires_at"].replace("Z", "+00:00"))
            if (expires - read_at).total_seconds() > CLOCK_MARGIN_S:
                kept += hold["quantity"]
    return kept


def response_label(attempt):
    """'201 created', '409 sold_out', '503 unavailable', 'no answer' ..."""
    if not attempt.status:
        return "no answer"
    return f"{attempt.status} {attempt.code or {200: 'replayed', 201: 'created'}.get(attempt.status, 'ok')}"


def confirmation_report(results, holds):
    """Confirmations asked, accepted (202/200) and kept (ended CONFIRMED), and the time to confirm."""
    asked = [r for r in results if r.hold and r.buyer.plan == "confirm"]
    accepted = [r.hold["id"] for r in asked if r.action_status in (200, 202)]
    ended = Counter(holds.get(h, {}).get("status") for h in accepted)
    waits = []
    for hold_id in accepted:
        hold = holds.get(hold_id, {})
        if hold.get("confirmed_at") and hold.get("confirmation_requested_at"):
            waits.append((_parse(hold["confirmed_at"]) - _parse(hold["confirmation_requested_at"]))
                         .total_seconds())
    return {
        "asked": len(asked), "accepted": len(accepted),
        "refused": sum(1 for r in asked if r.action_status == 409),
        "kept": ended.get("CONFIRMED", 0), "payment_refused_or_unfinished": ended.get("RELEASED", 0),
        "still_paying": ended.get("CONFIRMING", 0),
        "time_to_confirm_s": {f"p{q}": _round(percentile(waits, q)) for q in (50, 99)}
        | {"max": _round(max(waits) if waits else None)},
    }


def _parse(moment):
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def build_report(crowd, url, results, before, after, holds, read_at, elapsed, audit_result):
    """The simulation's report as a JSON-ready dict, with `ok` false on any breach found."""
    attempts = [a for r in results for a in r.attempts]
    latencies = [a.latency_ms for a in attempts if a.status]
    responses = Counter(response_label(a) for a in attempts)
    answers = Counter(r.answer for r in results)
    won = [r for r in results if r.hold]
    statuses = Counter(h["status"] for h in holds.values())
    units_won = sum(r.hold.get("quantity", 1) for r in won)
    kept = kept_units(holds, read_at)
    total, available = after["total_stock"], after["available"]
    checks = {
        "available_not_negative": available >= 0,
        "kept_within_stock": kept <= total,
        "kept_plus_available_within_stock": kept + available <= total,
        "audit": audit_result["status"],
    }
    answered = [r.attempts[-1].answered_at for r in results if r.attempts]
    return {
        "url": url,
        "product": crowd.product,
        "crowd": {"buyers": crowd.buyers, "arrival": crowd.arrival, "ramp_seconds": crowd.ramp_seconds,
                  "quantity": crowd.quantity, "plans": dict(Counter(r.buyer.plan for r in results)),
                  "retriers": sum(r.buyer.retries for r in results)},
        "responses": dict(sorted(responses.items())),
        "retries": len(attempts) - len(results),
        "answers": dict(answers.most_common()),
        "stock": {"total": before["total_stock"], "available_before": before["available"],
                  "available_after": available},
        "holds_won": len(won),
        "units_won": units_won,
        "units_kept": kept,
        # Units our holds took and gave back (released, lapsed, payment refused), and how many of
        # those were won again by later buyers: why more units can be won than were available.
        "units_returned": units_won - kept,
        "units_sold_again": max(0, units_won - before["available"]),
        "outcomes": {s.lower(): statuses.get(s, 0)
                     for s in ("CONFIRMED", "CONFIRMING", "EXPIRED", "RELEASED", "PENDING")},
        "confirmations": confirmation_report(results, holds),
        "time_to_sell_out_s": _round(time_to_sell_out(results, before["available"])),
        "time_to_all_answered_s": _round(max(answered) if answered else None),
        "duration_s": _round(elapsed),
        "latency_ms": {f"p{q}": _round(percentile(latencies, q), 1) for q in (50, 95, 99)}
        | {"max": _round(max(latencies) if latencies else None, 1), "count": len(latencies)},
        "checks": checks,
        "audit": audit_result,
        "ok": all(v for k, v in checks.items() if k != "audit") and audit_result["status"] != "failed",
    }


def _round(value, digits=3):
    return None if value is None else round(value, digits)


def render(report):
    """The report as the table `flask simulate` prints."""
    def join(counts):
        return " · ".join(f"{k} {v}" for k, v in counts.items()) or "-"

    def seconds(value):
        return "never (not sold out)" if value is None else f"{value:.2f} s"

    latency = report["latency_ms"]
    stock, checks, audit = report["stock"], report["checks"], report["audit"]
    oversell = "ok" if all(checks[k] for k in checks if k != "audit") else "BREACH"
    rows = [
        ("crowd", f"{report['crowd']['buyers']} buyers, {report['crowd']['arrival']}"
                  + (f" over {report['crowd']['ramp_seconds']} s" if report["crowd"]["arrival"] == "ramp"
                     else "") + f", plans {join(report['crowd']['plans'])}"),
        ("responses", join(report["responses"]) + f"  (retries {report['retries']})"),
        ("answers", join(report["answers"])),
        ("units won", units_text(report)),
        ("outcomes", join(report["outcomes"])),
        ("confirmations", confirmations_text(report["confirmations"])),
        ("time to sell out", seconds(report["time_to_sell_out_s"])),
        ("all answered", seconds(report["time_to_all_answered_s"])),
        ("latency (hold)", " · ".join(f"{k} {v} ms" for k, v in latency.items() if k != "count")
         + f"  ({latency['count']} requests)"),
        ("oversell (API)", f"{oversell}: available {stock['available_after']} >= 0, "
                           f"{report['units_kept']} units kept + {stock['available_after']} available "
                           f"<= {stock['total']}"),
        ("audit", audit["status"] + (f": {audit['note']}" if audit.get("note") else "")),
    ]
    if report.get("waiting_room"):
        rows[3:3] = line_text(report["waiting_room"])
    rows += [("", f"BREACH {breach}") for breach in audit.get("breaches", [])]
    if report.get("undecided_after_settle"):
        rows.append(("note", f"{report['undecided_after_settle']} confirmations were still undecided when "
                             "the wait ended: is a worker running (flask worker)?"))
    if any(label.startswith("429") for label in report["responses"]):
        rows.append(("note", "429 rate_limited: the server limits per address; on a test server set "
                             "RATELIMIT_ENABLED=false, or TRUSTED_PROXIES=1 (we send one address per buyer)"))
    width = max(len(label) for label, _ in rows)
    title = f"flash sale on {report['product']} at {report['url']} ({report['duration_s']} s)"
    return "\n".join([title] + [f"  {label:<{width}}  {value}" for label, value in rows]
                     + ["", "OK: nothing oversold" if report["ok"] else "FAILED: see the breaches above"])


def units_text(report):
    """'109 won by 109 holds of 100 available (stock 100): 91 kept, 18 came back (released, lapsed or
    refused), 9 of them won again': why more units can be won than there are, without an oversell."""
    stock = report["stock"]
    text = (f"{report['units_won']} won by {report['holds_won']} holds of {stock['available_before']} "
            f"available (stock {stock['total']}): {report['units_kept']} kept (confirmed, paying or held)")
    if report["units_returned"]:
        text += f", {report['units_returned']} came back (released, lapsed or payment refused)"
    if report["units_sold_again"]:
        text += f", {report['units_sold_again']} of them won again by later buyers"
    return text


def confirmations_text(c):
    """'70 asked · 70 accepted · 70 kept · 0 refused by payment; accepted -> paid p50 0.31 s, p99 ...'."""
    wait = c["time_to_confirm_s"]
    timing = ("" if wait["p50"] is None else
              f"; accepted -> paid p50 {wait['p50']:.2f} s, p99 {wait['p99']:.2f} s, max {wait['max']:.2f} s")
    late = f" · {c['refused']} too late" if c["refused"] else ""
    paying = f" · {c['still_paying']} still paying" if c["still_paying"] else ""
    return (f"{c['asked']} asked · {c['accepted']} accepted · {c['kept']} kept"
            f" · {c['payment_refused_or_unfinished']} refused by payment{late}{paying}{timing}")


