/* flashsale: what every page shares. Countdowns run on the server's clock, not the browser's.
 * No inline scripts anywhere: the Content-Security-Policy only allows files served from /static. */
(function () {
  "use strict";
  var FS = (window.FS = window.FS || {});
  var offsetMs = 0; // server clock minus this browser's clock

  /** Learn the server's time (an ISO string it sent) so countdowns ignore this machine's clock drift. */
  FS.syncClock = function (serverIso) {
    var server = Date.parse(serverIso || "");
    if (!isNaN(server)) offsetMs = server - Date.now();
  };

  /** Milliseconds since the epoch by the server's clock. */
  FS.serverNow = function () {
    return Date.now() + offsetMs;
  };

  /** "0:42", "12:05", "3 h 05 min", "2 d 4 h" for a number of milliseconds left. */
  FS.formatRemaining = function (ms) {
    var s = Math.max(0, Math.ceil(ms / 1000));
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + String(m).padStart(2, "0") + " min";
    return m + ":" + String(s % 60).padStart(2, "0");
  };

  /** GET a JSON endpoint of this site; rejects on a non-2xx answer. */
  FS.getJSON = function (url) {
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error(url + " answered " + response.status);
        return response.json();
      });
  };

  /** Call task() (which returns a promise) now and then every intervalMs() after it settles. */
  FS.poll = function (task, intervalMs) {
    var timer = null;
    function run() {
      clearTimeout(timer);
      Promise.resolve().then(task).catch(function (error) {
        if (window.console) console.warn(error);
      }).then(function () {
        timer = setTimeout(run, typeof intervalMs === "function" ? intervalMs() : intervalMs);
      });
    }
    run();
    return { now: run };
  };

  /** Every [data-countdown-to] element shows the time left; at zero it fires "fs:countdown-done". */
  function tickCountdowns() {
    document.querySelectorAll("[data-countdown-to]").forEach(function (el) {
      var left = Date.parse(el.getAttribute("data-countdown-to")) - FS.serverNow();
      if (left > 0) {
        el.textContent = (el.hasAttribute("data-hold-countdown") ? "" : "in ") + FS.formatRemaining(left);
      } else if (!el.hasAttribute("data-done")) {
        el.setAttribute("data-done", "");
        el.textContent = el.getAttribute("data-done-text") || "now";
        el.dispatchEvent(new CustomEvent("fs:countdown-done", { bubbles: true }));
      }
    });
  }

  /** A form marked data-once cannot be sent twice by a double click (the server is idempotent too). */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-once")) return;
    if (form.getAttribute("data-sent") === "true") {
      event.preventDefault();
      return;
    }
    form.setAttribute("data-sent", "true");
    form.querySelectorAll("button[type=submit]").forEach(function (button) {
      button.setAttribute("aria-disabled", "true");
      button.classList.add("busy");
    });
  });

  // After a refused form, put the keyboard on the first field that needs fixing.
  var invalid = document.querySelector("[aria-invalid=true]");
  if (invalid) invalid.focus();

  var clockSource = document.querySelector("[data-server-now]");
  if (clockSource) FS.syncClock(clockSource.getAttribute("data-server-now"));
  tickCountdowns();
  setInterval(tickCountdowns, 250);
})();
