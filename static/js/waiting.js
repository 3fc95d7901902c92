/* The waiting page: follow the ticket (position, wait, progress) at the pace the server suggests, and
 * reload when its state changes, so the server renders the buy form (or the final answer). Without
 * JavaScript a <noscript> refresh does the same. */
(function () {
  "use strict";
  var page = document.querySelector("[data-waiting]");
  if (!page || page.getAttribute("data-state") !== "waiting") return;
  var position = page.querySelector("[data-position]");
  var length = page.querySelector("[data-line-length]");
  var wait = page.querySelector("[data-wait]");
  var progress = page.querySelector("[data-progress]");
  var pollMs = 1000 * Number(page.getAttribute("data-poll-seconds") || 5);

  function show(ticket) {
    if (ticket.state !== "waiting") {
      window.location.reload();
      return;
    }
    pollMs = 1000 * ticket.poll_seconds;
    if (position) position.textContent = String(ticket.position);
    if (length) length.textContent = String(ticket.line_length);
    if (wait) wait.textContent = FS.formatRemaining(1000 * ticket.estimated_wait_seconds);
    if (progress) {
      progress.max = ticket.admitted + ticket.position;
      progress.value = ticket.admitted;
    }
  }

  FS.poll(function () {
    return FS.getJSON(page.getAttribute("data-ticket-url")).then(show);
  }, function () {
    return pollMs;
  });
})();
