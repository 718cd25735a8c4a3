// Progressive enhancement only: every page works without this file.
// Filter selects submit their form on change.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("select.autosubmit").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });
});
