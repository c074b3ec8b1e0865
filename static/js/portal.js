// Small behaviours the server cannot do alone. No framework: htmx does the rest.
document.addEventListener("htmx:responseError", function (event) {
  // Show the server's error fragment (403, 404, 409, 500 ...) in the message area (inside
  // it, so that later messages sent with htmx answers still find their place).
  var flash = document.getElementById("flash-messages") || document.getElementById("flash");
  if (flash && event.detail.xhr) {
    flash.innerHTML = event.detail.xhr.responseText;
    window.scrollTo(0, 0);
  }
});
document.addEventListener("htmx:sendError", function () {
  var flash = document.getElementById("flash-messages") || document.getElementById("flash");
  if (flash) {
    flash.innerHTML = '<p class="flash flash-error" role="alert">No connection. Nothing was lost: try again when the network is back.</p>';
  }
});
document.addEventListener("click", function (event) {
  var target = event.target.closest("[data-confirm]");
  if (target && !window.confirm(target.getAttribute("data-confirm"))) {
    event.preventDefault();
    event.stopPropagation();
  }
}, true);
document.addEventListener("htmx:oobBeforeSwap", function (event) {
  // A grid row swapped in because a fix changed it keeps an edit form someone has open on
  // it, with what they typed: saving the form shows the row as it is then.
  var target = event.detail.target;
  if (target && target.classList && target.classList.contains("editing")) {
    event.detail.shouldSwap = false;
  }
});
// On a slow link a tap must show that it was taken, and a second tap must not send it again:
// the page shows a bar (html.busy), dims what will be replaced, and disables the button or
// the form's buttons until the answer comes.
var requests = 0;
function polling(elt) {  // a progress bar asking every second is no tap
  return /\bevery\b/.test(elt.getAttribute("hx-trigger") || "");
}
function tapped(elt) {
  if (elt.tagName === "FORM") return Array.prototype.slice.call(elt.querySelectorAll("button"));
  return elt.tagName === "BUTTON" ? [elt] : [];
}
document.addEventListener("htmx:beforeRequest", function (event) {
  if (polling(event.detail.elt)) return;
  requests += 1;
  document.documentElement.classList.add("busy");
  var target = event.detail.target;
  if (target && target !== document.body) target.setAttribute("aria-busy", "true");
  tapped(event.detail.elt).forEach(function (button) {
    if (!button.disabled) { button.disabled = true; button.setAttribute("data-busy", ""); }
  });
});
document.addEventListener("htmx:afterRequest", function (event) {
  if (polling(event.detail.elt)) return;
  requests = Math.max(0, requests - 1);
  if (!requests) document.documentElement.classList.remove("busy");
  var target = event.detail.target;
  if (target) target.removeAttribute("aria-busy");
  tapped(event.detail.elt).forEach(function (button) {
    if (button.hasAttribute("data-busy")) { button.disabled = false; button.removeAttribute("data-busy"); }
  });
});
