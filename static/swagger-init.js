// Starts Swagger UI on hoglet's OpenAPI document (a file, since the pages allow no inline script).
window.addEventListener("DOMContentLoaded", function () {
  SwaggerUIBundle({ url: "/api/schema/", dom_id: "#swagger-ui", deepLinking: true });
});
