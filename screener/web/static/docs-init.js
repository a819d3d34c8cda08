// Starts Swagger UI on /docs from the locally bundled assets (no CDN; the page's CSP allows only 'self').
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
