/* The product page: refresh available units every few seconds and open or close the buy form. */
(function () {
  "use strict";
  var page = document.querySelector("[data-product]");
  if (!page) return;
  var POLL_MS = 3000;
  var meter = page.querySelector("[data-stock-meter]");
  var text = page.querySelector("[data-stock-text]");
  var banner = page.querySelector("[data-sale-banner]");
  var fieldset = page.querySelector("[data-buy-fieldset]");
  var button = page.querySelector("[data-buy-button]");
  var BANNERS = {
    sold_out: "Sold out. Units come back if someone's hold expires, so this page keeps checking.",
    ended: "This sale has ended.",
    live: "On sale now."
  };
  var BUTTONS = { sold_out: "Sold out", ended: "Sale ended", upcoming: "Not open yet" };

  function show(stock) {
    FS.syncClock(stock.server_time);
    if (meter) {
      meter.max = Math.max(stock.total, 1);
      meter.value = stock.available;
    }
    if (text) {
      text.textContent = stock.state === "sold_out" ? "Sold out" : stock.available + " of " + stock.total + " left";
    }
    var previous = page.getAttribute("data-state");
    if (stock.state === previous) return;
    page.setAttribute("data-state", stock.state);
    page.classList.remove("state-" + previous);
    page.classList.add("state-" + stock.state);
    if (banner && BANNERS[stock.state]) banner.textContent = BANNERS[stock.state];
    if (fieldset) fieldset.disabled = stock.state !== "live";
    if (button) button.textContent = stock.state === "live" ? button.getAttribute("data-open-label") : BUTTONS[stock.state];
  }

  // The server paces its watchers (poll_seconds, longer when many watch or nothing can change) and
  // each page adds jitter, so thousands of pages do not poll in lockstep. An unchanged stock answers
  // 304 to our If-None-Match, with no body.
  var paceMs = POLL_MS;
  var etag = null;
  function jittered(ms) {
    return ms * (0.75 + Math.random() * 0.5);
  }
  function poll() {
    var headers = { Accept: "application/json" };
    if (etag) headers["If-None-Match"] = etag;
    return fetch(page.getAttribute("data-stock-url"), { headers: headers, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        var pace = parseFloat(response.headers.get("Poll-Seconds"));
        if (pace > 0) paceMs = pace * 1000;
        if (response.status === 304) return;
        if (!response.ok) throw new Error("stock answered " + response.status);
        etag = response.headers.get("ETag");
        return response.json().then(show);
      });
  }
  page.setAttribute("data-poll-ms", String(paceMs));
  var poller = FS.poll(poll, function () {
    var wait = jittered(paceMs);
    page.setAttribute("data-poll-ms", String(Math.round(paceMs)));
    return wait;
  });
  page.addEventListener("fs:countdown-done", function () {
    // The opening: every page sees it at once, so each one asks within a second, not all at once.
    setTimeout(poller.now, Math.random() * 1000);
  });
})();
