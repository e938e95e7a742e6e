// Keeps a page current without a reload: the content of <main
// data-refresh="ms"> is fetched again (only the content, marked by the
// X-UI-Fragment header) and replaced when it changed, unless the user is
// typing in a field of it. Forms with data-confirm ask first.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); }
  });
  var main = document.getElementById("content");
  if (!main) { return; }
  var every = parseInt(main.getAttribute("data-refresh") || "0", 10);
  if (!every) { return; }
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    var focused = document.activeElement;
    if (focused && main.contains(focused) && /^(INPUT|SELECT|TEXTAREA)$/.test(focused.tagName)) { return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-UI-Fragment": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected || !r.ok) { return null; }
        return r.text();
      })
      .then(function (html) {
        if (html !== null && html !== main.innerHTML) {
          main.innerHTML = html;
          main.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(refresh, every);
})();
