/* The card step of a hold being paid with Stripe: Stripe Elements collects the card, the server
 * authorises it (POST /api/holds/<id>/confirm {"payment_method"}), Stripe.js runs 3-D Secure in its own
 * dialog when the bank asks for it, and the server is then asked to read the payment again. The worker
 * captures; hold.js reloads the page when the hold's status changes (CONFIRMED, or RELEASED). */
(function () {
  "use strict";
  var page = document.querySelector("[data-hold]");
  var form = document.querySelector("[data-card-form]");
  if (!page || !form) return;
  var errorBox = form.querySelector("[data-card-error]");
  var note = document.querySelector("[data-card-note]");
  var button = form.querySelector("[data-card-pay]");
  var busy = false;
  var acted = {}; // client secrets whose 3-D Secure dialog was already shown on this page

  if (typeof window.Stripe !== "function") {
    note.textContent = "The card form could not be loaded. Reload the page to try again.";
    return;
  }
  var stripe = window.Stripe(form.getAttribute("data-stripe-key"));
  var card = stripe.elements().create("card");
  card.mount(form.querySelector("[data-card-element]"));

  function say(error, text) {
    errorBox.textContent = error || "";
    note.textContent = text || "";
  }

  function setBusy(on) {
    busy = on;
    button.disabled = on;
    button.classList.toggle("busy", on);
  }

  /** A PaymentMethod id for the card. Stripe.js makes one; a stand-in without createPaymentMethod
   * (localstripe's, for offline tests) tokenises the card, and Stripe takes the token's Card in place. */
  function paymentMethod() {
    var made = typeof stripe.createPaymentMethod === "function"
      ? stripe.createPaymentMethod({ type: "card", card: card }) : null;
    return Promise.resolve(made).then(function (result) {
      if (result && result.error) throw result.error;
      if (result && result.paymentMethod) return result.paymentMethod.id;
      return stripe.createToken(card).then(function (tokenized) {
        if (tokenized.error) throw tokenized.error;
        return tokenized.token.card.id;
      });
    });
  }

  /** POST the confirm (with a card, or without one to have the payment read again); the hold's JSON. */
  function confirm(body) {
    return fetch(form.getAttribute("data-confirm-url"), {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body ? JSON.stringify(body) : null,
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) throw new Error((answer.error && answer.error.message) || "The payment could not be sent.");
        return answer;
      });
    });
  }

  /** Show where the payment stands; run 3-D Secure once when the bank asks for it. */
  function follow(hold) {
    if (hold.status && hold.status !== page.getAttribute("data-status")) {
      window.location.reload();
      return null;
    }
    var payment = hold.payment || {};
    form.setAttribute("data-payment-status", payment.status);
    if (payment.status === "requires_action" && payment.client_secret && !acted[payment.client_secret]) {
      acted[payment.client_secret] = true;
      say("", "Your bank asks you to confirm this payment.");
      return stripe.confirmCardPayment(payment.client_secret).then(function (result) {
        // Whatever the dialog says, the server reads the intent and decides.
        return confirm(null).then(function (again) {
          if (result && result.error && (again.payment || {}).status !== "processing") {
            say(result.error.message || "The card was not authenticated. Try again, or another card.");
          }
          return follow(again);
        });
      });
    }
    if (payment.status === "requires_payment_method" || payment.status === "requires_action") {
      form.hidden = false;
      say(payment.error || errorBox.textContent, payment.error ? "Try another card." : "");
    } else if (payment.status === "processing") {
      form.hidden = true;
      say("", "Card accepted: completing the payment...");
    }
    return null;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) return;
    setBusy(true);
    say("", "Checking the card...");
    paymentMethod()
      .then(function (id) { return confirm({ payment_method: id }); })
      .then(follow)
      .catch(function (error) { say((error && error.message) || "The payment could not be sent.", ""); })
      .then(function () { setBusy(false); });
  });

  page.addEventListener("fs:payment", function (event) {
    if (!busy) follow({ payment: event.detail }); // a payment, not a hold: no status to compare
  });

  form.hidden = form.getAttribute("data-payment-status") === "processing";
})();
