/* The hold page: count down to expiry on the server's clock, and follow the status while payment runs.
 * When the status changes (paid, refused, expired, or confirmed in another tab) the page reloads, so
 * the server renders the one true result. Without JavaScript a CONFIRMING page refreshes itself. */
(function () {
  "use strict";
  var page = document.querySelector("[data-hold]");
  if (!page) return;
  var status = page.getAttribute("data-status");
  if (status !== "PENDING" && status !== "CONFIRMING") return;
  var result = page.querySelector("[data-hold-result]");
  var actions = page.querySelector("[data-hold-actions]");
  var confirming = status === "CONFIRMING";

  function disableActions() {
    if (!actions) return;
    actions.querySelectorAll("button").forEach(function (button) {
      button.disabled = true;
    });
  }

  function show(hold) {
    FS.syncClock(hold.server_time);
    if (hold.status !== status) {
      disableActions();
      window.location.reload();
      return;
    }
    // The card form (card.js) follows the payment between page loads.
    if (hold.payment) page.dispatchEvent(new CustomEvent("fs:payment", { detail: hold.payment }));
  }

  var poller = FS.poll(function () {
    return FS.getJSON(page.getAttribute("data-status-url")).then(show);
  }, function () {
    return confirming ? 700 : 3000;
  });

  page.addEventListener("fs:countdown-done", function () {
    if (confirming) {
      poller.now(); // the card's deadline passed: the server releases the hold shortly
      return;
    }
    // The clock has decided: nothing can be confirmed any more. Ask the server to say so.
    disableActions();
    if (result) result.textContent = "Time is up: this hold has expired.";
    poller.now();
  });
})();
