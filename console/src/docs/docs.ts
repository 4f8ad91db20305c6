// The API docs page (/docs): Swagger UI, from the gateway's own copy (swagger-ui-bundle.js,
// loaded before this file), over the gateway's merged document. Nothing is fetched from
// anywhere else: no validator badge (validator.swagger.io), no CDN. "Try it out" calls
// the gateway from the page's origin; with a browser session it sends the CSRF token on
// unsafe methods, from the cookie /console/config.json names (`csrf_cookie`), as the
// console does. The Authorize button's API key works as well.

export {};

interface SwaggerRequest {
  method?: string;
  headers: Record<string, string>;
}

declare const SwaggerUIBundle: ((options: Record<string, unknown>) => unknown) & {
  presets: { apis: unknown };
};

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

// The CSRF cookie's name (CSRF_COOKIE_NAME), asked once.
const csrfCookie: Promise<string> = fetch("/console/config.json")
  .then((response) => (response.ok ? response.json() : {}))
  .then((config: { csrf_cookie?: string }) => config.csrf_cookie ?? "csrf_token")
  .catch(() => "csrf_token");

function cookie(wanted: string): string | undefined {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === wanted) return decodeURIComponent(value.join("="));
  }
  return undefined;
}

SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  requestInterceptor: async (request: SwaggerRequest) => {
    if (!SAFE_METHODS.has((request.method ?? "GET").toUpperCase())) {
      const token = cookie(await csrfCookie);
      if (token) request.headers["X-CSRF-Token"] = token;
    }
    return request;
  },
});
