// Small behaviours the server cannot do alone. No framework: htmx does the rest.
document.addEventListener("htmx:responseError", function (event) {
  // Show the server's error fragment (403, 404, 409, 500 ...) in the message area.
  var flash = document.getElementById("flash");
  if (flash && event.detail.xhr) {
    flash.innerHTML = event.detail.xhr.responseText;
    window.scrollTo(0, 0);
  }
});
document.addEventListener("htmx:sendError", function () {
  var flash = document.getElementById("flash");
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
