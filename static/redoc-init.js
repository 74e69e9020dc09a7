// Starts ReDoc on hoglet's OpenAPI document (a file, since the pages allow no inline script).
window.addEventListener("DOMContentLoaded", function () {
  Redoc.init("/api/schema/", {}, document.getElementById("redoc"));
});
