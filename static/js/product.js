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

  var poller = FS.poll(function () {
    return FS.getJSON(page.getAttribute("data-stock-url")).then(show);
  }, POLL_MS);
  page.addEventListener("fs:countdown-done", function () {
    poller.now();
  });
})();
