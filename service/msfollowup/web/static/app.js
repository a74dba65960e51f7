// Progressive enhancement only: every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Filters apply as soon as a choice changes.
  document.querySelectorAll("select.autosubmit").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });
  // Ask before irreversible actions.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });
  // Click a column heading to sort the rows of this page.
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute("data-sort") !== "asc";
        rows.sort(function (a, b) {
          var x = (a.cells[col] || {}).textContent || "", y = (b.cells[col] || {}).textContent || "";
          var nx = parseFloat(x), ny = parseFloat(y);
          var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
        th.setAttribute("data-sort", asc ? "asc" : "desc");
      });
    });
  });
});
