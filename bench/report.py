"""Turning rounds of raw results into medians, spreads, same-run ratios, targets and one table."""

import statistics

# (scenario, metric, label) rows of the table, in order.
ROWS = [
    ("hello", "req_per_s", "hello-world ceiling, req/s"),
    ("hello", "cpu_ms_per_request", "hello world, server CPU ms per request"),
    ("floor404", "req_per_s", "404 under /api/ (the floor a poll is compared with), req/s"),
    ("poll", "req_per_s", "poll GET /api/products/<id>, req/s"),
    ("poll", "p99_ms", "poll GET /api/products/<id>, p99 ms"),
    ("pollpage", "req_per_s", "product page's poll GET /products/<id>/stock, req/s"),
    ("soldout", "req_per_s", "sold-out rejections, req/s"),
    ("soldout", "p99_ms", "sold-out rejections, p99 ms"),
    ("soldout", "cpu_ms_per_request", "sold-out rejection, app CPU ms per request"),
    ("redis2", "req_per_s", "Flask + the same 2 Redis round trips, req/s"),
    ("hot", "ok_per_s", "hot product (200 clients), holds/s"),
    ("hot", "p50_ms", "hot product, p50 ms"),
    ("hot", "p99_ms", "hot product, p99 ms"),
    ("hot", "cpu_ms_per_request", "hold (hot product), app CPU ms per request"),
    ("lockfree", "ok_per_s", "lock-free baseline, holds/s"),
    ("lockfree", "p50_ms", "lock-free baseline, p50 ms"),
    ("lockfree", "p99_ms", "lock-free baseline, p99 ms"),
    ("naive", "ok_per_s", "naive (sleep-polled lock + SUM), holds/s"),
    ("naive", "p99_ms", "naive, p99 ms"),
    ("many", "ok_per_s", "100 products at once, holds/s"),
    ("many", "p99_ms", "100 products, p99 ms"),
    ("size0", "ok_per_s", "empty sale (16 clients), holds/s"),
    ("size0", "p50_ms", "empty sale, p50 ms"),
    ("sizefull", "ok_per_s", "sale with history (16 clients), holds/s"),
    ("sizefull", "p50_ms", "sale with history, p50 ms"),
    ("burst_hello", "answer_100_s", "burst floor: 100th answer from hello world, s"),
    ("burst_hello", "all_answered_s", "burst floor: every hello-world answer, s"),
    ("burst", "won", "burst: holds won (must be 100)"),
    ("burst", "last_unit_s", "burst: time until sold out (last unit taken, db clock), s"),
    ("burst", "sold_out_s", "burst: time until the last winner had its answer, s"),
    ("burst", "all_answered_s", "burst: time until every buyer answered, s"),
    ("burst", "p50_ms", "burst: p50 ms"),
    ("burst", "p95_ms", "burst: p95 ms"),
    ("burst", "p99_ms", "burst: p99 ms"),
    ("burst", "cpu_ms_per_request", "burst: app CPU ms per buyer"),
    ("burst_watched", "won", "burst with 5,000 watchers: holds won (must be 100)"),
    ("burst_watched", "last_unit_s", "burst with watchers: time until sold out (db clock), s"),
    ("burst_watched", "sold_out_s", "burst with watchers: time until the last winner had its answer, s"),
    ("burst_watched", "all_answered_s", "burst with watchers: time until every buyer answered, s"),
    ("burst_watched", "p50_ms", "burst with watchers: p50 ms"),
    ("burst_watched", "p95_ms", "burst with watchers: p95 ms"),
    ("burst_watched", "p99_ms", "burst with watchers: p99 ms"),
    ("watchers", "polls_per_s", "watchers: polls per second during warm-up and burst"),
    ("watchers", "pace_p50_s", "watchers: poll_seconds the server gave them, p50"),
]

# (name, numerator, denominator, target, passes(value)) computed per round, reported as medians.
RATIOS = [
    ("sold-out rejections / hello world", ("soldout", "req_per_s"), ("hello", "req_per_s"),
     ">= 0.60", lambda r: r >= 0.6),
    ("sold-out rejections / Flask + 2 Redis round trips", ("soldout", "req_per_s"),
     ("redis2", "req_per_s"), "(floor)", None),
    ("hot product / lock-free baseline", ("hot", "ok_per_s"), ("lockfree", "ok_per_s"),
     ">= 1.00", lambda r: r >= 1.0),
    ("hot product / naive", ("hot", "ok_per_s"), ("naive", "ok_per_s"), "(contrast)", None),
    ("100 products / hot product", ("many", "ok_per_s"), ("hot", "ok_per_s"),
     ">= 4.0", lambda r: r >= 4.0),
    ("empty sale / sale with history (slowdown)", ("size0", "ok_per_s"), ("sizefull", "ok_per_s"),
     "<= 1.50", lambda r: r <= 1.5),
    ("burst: every buyer answered / every hello-world answer", ("burst", "all_answered_s"),
     ("burst_hello", "all_answered_s"), "<= 1.50", lambda r: r <= 1.5),
    ("poll / 404 floor", ("poll", "req_per_s"), ("floor404", "req_per_s"), ">= 0.80", lambda r: r >= 0.8),
    ("page's stock poll / 404 floor", ("pollpage", "req_per_s"), ("floor404", "req_per_s"), ">= 0.80",
     lambda r: r >= 0.8),
    *[(f"burst with watchers / burst alone: {label}", ("burst_watched", metric), ("burst", metric),
       "<= 1.20", lambda r: r <= 1.2)
      for metric, label in (("last_unit_s", "sold out"), ("sold_out_s", "last winner answered"),
                            ("all_answered_s", "every buyer answered"), ("p50_ms", "p50"),
                            ("p95_ms", "p95"), ("p99_ms", "p99"))],
    ("sold-out rejection CPU / hello-world CPU", ("soldout", "cpu_ms_per_request"),
     ("hello", "cpu_ms_per_request"), "(cost)", None),
    ("hold CPU / hello-world CPU", ("hot", "cpu_ms_per_request"), ("hello", "cpu_ms_per_request"),
     "(cost)", None),
]

# (name, scenario, metric, target, passes(value)) on medians.
ABSOLUTE = [
    ("hot product p99 at 200 clients", "hot", "p99_ms", "<= 300 ms", lambda v: v <= 300),
    ("burst sold out within 1 s", "burst", "last_unit_s", "<= 1.0 s", lambda v: v <= 1.0),
    ("burst: every buyer answered within 2.5 s", "burst", "all_answered_s", "<= 2.5 s",
     lambda v: v <= 2.5),
]

# (scenario, metric, label) of the server comparison, each also as a ratio to the first server.
COMPARED = [
    ("hello", "req_per_s", "hello world, req/s"),
    ("hello", "cpu_ms_per_request", "hello world, server CPU ms/request"),
    ("hello", "served_connections", "hello: connections served (Little's law), of 200"),
    ("soldout", "req_per_s", "sold-out answers, req/s"),
    ("soldout", "p99_ms", "sold-out answers, p99 ms"),
    ("soldout", "cpu_ms_per_request", "sold-out answer, app CPU ms/request"),
    ("soldout", "served_connections", "sold-out: connections served (Little's law), of 200"),
    ("hot", "ok_per_s", "hot product (200 clients), holds/s"),
    ("hot", "p99_ms", "hot product, p99 ms"),
    ("hot", "cpu_ms_per_request", "hold, app CPU ms/request"),
    ("hot", "served_connections", "hot: connections served (Little's law), of 200"),
    ("lockfree", "ok_per_s", "lock-free baseline, holds/s"),
    ("burst_hello", "all_answered_s", "hello-world burst of 5,000: every answer, s"),
    ("burst", "last_unit_s", "burst: last unit sold (db clock), s"),
    ("burst", "all_answered_s", "burst: every buyer answered, s"),
    ("burst", "p50_ms", "burst: p50 ms"),
    ("burst", "p99_ms", "burst: p99 ms"),
    ("burst", "won", "burst: holds won (must be 100)"),
]
COMPARED_RATIOS = ["sold-out rejections / hello world", "hot product / lock-free baseline",
                   "burst: every buyer answered / every hello-world answer"]


def brief(result):
    """One line about a wrk run."""
    others = {k: v for k, v in result["statuses"].items() if k not in (200, 201, 409)}
    errors = {k: v for k, v in result["errors"].items() if v}
    cpu = result.get("cpu_ms_per_request")
    served = result.get("served_connections")
    starved = served is not None and served < 0.8 * result["connections"]
    return (f"{result['ok_per_s']:8.1f} holds/s {result['req_per_s']:8.1f} req/s  "
            f"p50 {result['p50_ms']:7.1f}  p99 {result['p99_ms']:7.1f} ms"
            + (f"  cpu {cpu:.2f} ms/req" if cpu is not None else "")
            + (f"  STARVING: only ~{served:.0f} of {result['connections']} connections served"
               if starved else "")
            + (f"  other statuses {others}" if others else "")
            + (f"  socket errors {errors}" if errors else ""))


def brief_burst(result):
    """One line about a burst."""
    return (f"won {result['won']} (orders {result['orders']})  last unit {result['last_unit_s']:.2f} s  "
            f"last winner answered {result['sold_out_s']:.2f} s  "
            f"all answered {result['all_answered_s']:.2f} s  p50 {result['p50_ms']:.0f}  "
            f"p99 {result['p99_ms']:.0f} ms  statuses {result['statuses']}")


def _value(result, scenario, metric):
    return result.get(scenario, {}).get(metric)


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return {"median": median, "min": min(values), "max": max(values), "spread": spread,
            "values": values}


def summarise(rounds):
    """Medians and spreads of every table row and ratio, plus target verdicts."""
    rows = {f"{s}.{m}": _stats([r.get(s, {}).get(m) for r in rounds]) for s, m, _ in ROWS}
    ratios = {}
    for name, (ns, nm), (ds, dm), target, passes in RATIOS:
        stats = _stats([r[ns][nm] / r[ds][dm] for r in rounds
                        if ns in r and ds in r and r[ds][dm]])
        ratios[name] = {**(stats or {}), "target": target,
                        "met": None if passes is None or not stats else passes(stats["median"])}
    absolute = {}
    for name, s, m, target, passes in ABSOLUTE:
        stats = rows[f"{s}.{m}"]
        absolute[name] = {"median": stats and stats["median"], "target": target,
                          "met": bool(stats) and passes(stats["median"])}
    return {"rows": rows, "ratios": ratios, "targets": absolute}


def problems(rounds, units):
    """Every correctness failure in the rounds: an oversell, a lost hold, a sale to a sold-out product."""
    found = []
    for n, r in enumerate(rounds, 1):
        burst = r.get("burst")
        if burst and (burst["won"], burst["orders"], burst["events"]) != (units, units, units):
            found.append(f"round {n}: burst won {burst['won']}, orders {burst['orders']}, "
                         f"events {burst['events']} (must all be {units})")
        watched = r.get("burst_watched")
        if watched and (watched["won"], watched["orders"], watched["events"]) != (units, units, units):
            found.append(f"round {n}: burst with watchers won {watched['won']}, orders {watched['orders']}, "
                         f"events {watched['events']} (must all be {units})")
        if r.get("soldout", {}).get("created"):
            found.append(f"round {n}: {r['soldout']['created']} holds on a sold-out product")
    return found


def _fmt(value):
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table(summary, machine, args):
    """The markdown table of a run."""
    lines = [
        f"machine: nproc={machine['nproc']}, load average {machine['loadavg'][0]:.2f} at the end, "
        f"git {machine['git']}; {args.rounds} round(s) x {args.seconds} s per scenario",
        "",
        "| measurement | median | min - max | spread |",
        "|---|---:|---:|---:|",
    ]
    for s, m, label in ROWS:
        st = summary["rows"][f"{s}.{m}"]
        if st:
            lines.append(f"| {label} | {_fmt(st['median'])} | {_fmt(st['min'])} - {_fmt(st['max'])} "
                         f"| {st['spread']:.0%} |")
    lines += ["", "| ratio (same round, median of rounds) | median | min - max | target | met |",
              "|---|---:|---:|---|---|"]
    for name, st in summary["ratios"].items():
        met = {True: "yes", False: "**no**", None: ""}[st["met"]]
        lines.append(f"| {name} | {_fmt(st.get('median'))} | {_fmt(st.get('min'))} - "
                     f"{_fmt(st.get('max'))} | {st['target']} | {met} |")
    lines += ["", "| absolute target | median | target | met |", "|---|---:|---|---|"]
    for name, st in summary["targets"].items():
        met = "yes" if st["met"] else "**no**"
        lines.append(f"| {name} | {_fmt(st['median'])} | {st['target']} | {met} |")
    return "\n".join(lines)


def compare(by_server, first):
    """Each server's medians of the compared rows and ratios, and its same-round ratio to `first`."""
    compared = {}
    for name, rounds in by_server.items():
        summary = summarise(rounds)
        rows = {}
        for s, m, _ in COMPARED:
            pairs = [(_value(mine, s, m), _value(theirs, s, m))
                     for mine, theirs in zip(rounds, by_server[first], strict=True)]
            rows[f"{s}.{m}"] = {**(_stats([mine for mine, _ in pairs]) or {}),
                                "vs_first": _stats([a / b for a, b in pairs if a is not None and b])}
        ratios = {name: summary["ratios"][name] for name in COMPARED_RATIOS}
        compared[name] = {"rows": rows, "ratios": ratios}
    return compared


def comparison_table(compared, args):
    """The markdown table of a server comparison: medians, and the ratio to the first server."""
    names = list(compared)
    lines = [f"server comparison: {args.rounds} round(s) x {args.seconds} s per scenario; median of "
             f"rounds, (x) = same-round ratio to {names[0]}, median of rounds", "",
             "| measurement | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s, m, label in COMPARED:
        cells = []
        for name in names:
            row = compared[name]["rows"][f"{s}.{m}"]
            cell = _fmt(row.get("median"))
            if name != names[0] and row.get("vs_first"):
                cell += f" ({row['vs_first']['median']:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for ratio in COMPARED_RATIOS:
        target = compared[names[0]]["ratios"][ratio]["target"]
        cells = [_fmt(compared[name]["ratios"][ratio].get("median")) for name in names]
        lines.append(f"| {ratio} (target {target}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
