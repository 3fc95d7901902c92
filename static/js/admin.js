/* The admin dashboard: poll GET /admin/metrics every few seconds and redraw the numbers and charts.
 * An ADMIN_TOKEN given to the page as ?token=... is sent with each poll (as X-Admin-Token). */
(function () {
  "use strict";
  var root = document.querySelector("[data-dashboard]");
  if (!root || !window.Chart) return;
  var token = new URLSearchParams(window.location.search).get("token");
  var pollMs = 1000 * Number(root.getAttribute("data-poll-seconds") || 5);
  var OUTCOMES = [
    ["created", "Created", "#2563eb"], ["confirmed", "Confirmed", "#16a34a"],
    ["expired", "Expired", "#d97706"], ["released", "Released", "#7c3aed"],
    ["sold_out", "Sold out", "#dc2626"], ["rate_limited", "Rate-limited", "#db2777"],
    ["busy", "Busy", "#0891b2"], ["rejected", "Other refusals", "#6b7280"]
  ];
  var PAYMENTS = [
    ["accepted", "Accepted", "#2563eb"], ["confirmed", "Paid", "#16a34a"],
    ["payment_refused", "Refused", "#dc2626"], ["reconciled", "Reconciled", "#d97706"],
    ["refunded", "Refunded", "#7c3aed"]
  ];
  var PALETTE = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
  var LATENCY = [
    ["latency", "p50", "Hold p50", "#16a34a"], ["latency", "p95", "Hold p95", "#d97706"],
    ["latency", "p99", "Hold p99", "#dc2626"], ["lock_wait", "p95", "Lock wait p95", "#6b7280"],
    ["payment", "p50", "Paid p50", "#2563eb"], ["payment", "p99", "Paid p99", "#7c3aed"]
  ];
  var MIN_BUCKETS = 24; // two minutes, so a fresh sale still has an axis worth reading
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

  function lineChart(id, datasets, stacked) {
    return new Chart(document.getElementById(id), {
      type: "line",
      data: { labels: [], datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, spanGaps: true,
        interaction: { mode: "index", intersect: false },
        elements: { point: { radius: 0 }, line: { borderWidth: 2, tension: 0.2 } },
        scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true, stacked: !!stacked } },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } }
      }
    });
  }

  var charts = {
    outcomes: lineChart("chart-outcomes", OUTCOMES.map(function (o) {
      return { label: o[1], data: [], borderColor: o[2], backgroundColor: o[2] };
    })),
    payments: lineChart("chart-payments", PAYMENTS.map(function (o) {
      return { label: o[1], data: [], borderColor: o[2], backgroundColor: o[2] };
    })),
    stock: lineChart("chart-stock", []),
    latency: lineChart("chart-latency", LATENCY.map(function (l) {
      return { label: l[2], data: [], borderColor: l[3], backgroundColor: l[3] };
    }))
  };

  function clock(t) {
    return new Date(t * 1000).toISOString().substring(11, 19);
  }

  function pick(data, path) {
    return path.split(".").reduce(function (value, key) {
      return value == null ? value : value[key];
    }, data);
  }

  function cell(tag, text, scope) {
    var el = document.createElement(tag);
    el.textContent = text;
    if (scope) el.setAttribute("scope", scope);
    return el;
  }

  function percent(rate) {
    return rate == null ? "–" : Math.round(rate * 100) + "%";
  }

  function fillTables(board) {
    var products = root.querySelector("[data-products]");
    products.replaceChildren.apply(products, board.products.map(function (p) {
      var row = document.createElement("tr");
      row.setAttribute("data-product-row", p.slug);
      row.appendChild(cell("th", p.name, "row"));
      ["total", "available", "held", "paying", "confirmed", "expired", "released", "holds"].forEach(function (col) {
        var td = cell("td", String(p[col]));
        td.setAttribute("data-col", col);
        row.appendChild(td);
      });
      var rate = cell("td", percent(p.conversion_rate));
      rate.setAttribute("data-col", "conversion_rate");
      row.appendChild(rate);
      return row;
    }));
    var rooms = root.querySelector("[data-rooms]");
    root.querySelector("[data-rooms-section]").hidden = board.waiting_rooms.length === 0;
    rooms.replaceChildren.apply(rooms, board.waiting_rooms.map(function (r) {
      var row = document.createElement("tr");
      row.setAttribute("data-room-row", r.slug);
      row.appendChild(cell("th", r.name, "row"));
      var dash = function (v) { return v == null ? "–" : String(v); };
      [String(r.line_length), String(r.admitted), r.rate + "/s", r.admitted_per_s_10s + "/s",
       dash(r.wait_s.p50) + " / " + dash(r.wait_s.p95) + " / " + dash(r.wait_s.p99),
       String(r.abandoned), percent(r.abandonment), r.closed || "open"].forEach(function (v) {
        row.appendChild(cell("td", v));
      });
      return row;
    }));
    var recent = root.querySelector("[data-recent]");
    recent.replaceChildren.apply(recent, board.recent_holds.map(function (h) {
      var row = document.createElement("tr");
      [clock(Date.parse(h.created_at) / 1000), h.product, h.email, String(h.quantity), h.status.toLowerCase()].forEach(function (v) {
        row.appendChild(cell("td", v));
      });
      return row;
    }));
  }

  /** The buckets worth drawing: from the first with data (at least MIN_BUCKETS), oldest first. */
  function recent(buckets, hasData) {
    var first = buckets.findIndex(hasData);
    var start = first < 0 ? buckets.length - MIN_BUCKETS : Math.min(first, buckets.length - MIN_BUCKETS);
    return buckets.slice(Math.max(0, start));
  }

  function drawCharts(board) {
    var series = recent(board.series, function (b) { return Object.keys(b).length > 1; });
    charts.outcomes.data.labels = series.map(function (b) { return clock(b.t); });
    charts.outcomes.data.datasets.forEach(function (dataset, i) {
      dataset.data = series.map(function (b) { return b[OUTCOMES[i][0]] || 0; });
    });
    charts.outcomes.update("none");
    charts.payments.data.labels = charts.outcomes.data.labels;
    charts.payments.data.datasets.forEach(function (dataset, i) {
      dataset.data = series.map(function (b) { return b[PAYMENTS[i][0]] || 0; });
    });
    charts.payments.update("none");

    var gauges = recent(board.gauges, function (g) { return Object.keys(g.stock).length > 0; });
    var gaugeLabels = gauges.map(function (g) { return clock(g.t); });
    charts.stock.data.labels = gaugeLabels;
    charts.stock.data.datasets = board.products.map(function (p, i) {
      var color = PALETTE[i % PALETTE.length];
      return {
        label: p.name, borderColor: color, backgroundColor: color,
        data: gauges.map(function (g) {
          var v = g.stock[String(p.id)];
          return v === undefined ? null : v;
        })
      };
    });
    charts.stock.update("none");

    charts.latency.data.labels = gaugeLabels;
    charts.latency.data.datasets.forEach(function (dataset, i) {
      var group = LATENCY[i][0], point = LATENCY[i][1];
      dataset.data = gauges.map(function (g) {
        var v = (g[group] || {})[point];
        return v === undefined ? null : v;
      });
    });
    charts.latency.update("none");
  }

  /** The last audit's tile and line (board.audit is null until `flask audit` has run once). */
  function showAudit(audit) {
    var result = root.querySelector("[data-audit-result]");
    result.textContent = !audit ? "not run yet" : audit.passed ? "passed" : "FAILED";
    root.querySelector("[data-audit-tile]").classList.toggle("alarm", !!audit && !audit.passed);
    if (!audit) return;
    var kinds = Object.keys(audit.by_invariant).filter(function (k) { return audit.by_invariant[k]; })
      .map(function (k) { return k + " " + audit.by_invariant[k]; });
    root.querySelector("[data-audit-detail]").textContent = audit.scope + " at " + audit.at.substring(11, 19) +
      " UTC" + (kinds.length ? "; breaches: " + kinds.join(", ") : "");
  }

  function show(board) {
    root.querySelectorAll("[data-metric]").forEach(function (el) {
      var value = pick(board, el.getAttribute("data-metric"));
      el.textContent = value == null ? "–" : String(value);
    });
    root.querySelector("[data-updated]").textContent = clock(Date.parse(board.server_time) / 1000) + " UTC";
    showAudit(board.audit);
    fillTables(board);
    drawCharts(board);
    root.setAttribute("data-polls", String(Number(root.getAttribute("data-polls")) + 1));
  }

  var errorNote = root.querySelector("[data-poll-error]");
  FS.poll(function () {
    var headers = { Accept: "application/json" };
    if (token) headers["X-Admin-Token"] = token;
    return fetch(root.getAttribute("data-metrics-url"), { headers: headers, cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("metrics answered " + response.status);
        return response.json();
      })
      .then(function (board) {
        errorNote.hidden = true;
        show(board);
      }, function (error) {
        errorNote.hidden = false;
        throw error;
      });
  }, pollMs);
})();
