/* The hold page: count down to expiry on the server's clock, and follow the status while payment runs.
 * When the status becomes final the page reloads, so the server renders the one true result. */
(function () {
  "use strict";
  var page = document.querySelector("[data-hold]");
  if (!page || page.getAttribute("data-status") !== "PENDING") return;
  var badge = page.querySelector("[data-hold-status]");
  var result = page.querySelector("[data-hold-result]");
  var actions = page.querySelector("[data-hold-actions]");
  var confirming = page.getAttribute("data-confirming") === "true";

  function disableActions() {
    if (!actions) return;
    actions.querySelectorAll("button").forEach(function (button) {
      button.disabled = true;
    });
  }

  function show(hold) {
    FS.syncClock(hold.server_time);
    if (hold.status !== "PENDING") {
      disableActions();
      if (badge) badge.textContent = hold.status.toLowerCase();
      window.location.reload();
      return;
    }
    confirming = hold.confirming;
    if (badge) badge.textContent = "pending" + (confirming ? " · payment in progress" : "");
  }

  var poller = FS.poll(function () {
    return FS.getJSON(page.getAttribute("data-status-url")).then(show);
  }, function () {
    return confirming ? 700 : 3000;
  });

  page.addEventListener("fs:countdown-done", function () {
    // The clock has decided: nothing can be confirmed any more. Ask the server to say so.
    disableActions();
    if (result) result.textContent = confirming ? "Waiting for the payment result…" : "Time is up: this hold has expired.";
    poller.now();
  });
})();
