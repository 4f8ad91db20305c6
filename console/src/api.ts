// The public API through the gateway, as any browser frontend calls it: the session
// cookie (sent by the browser, HttpOnly), and on every unsafe request the readable
// `csrf_token` cookie echoed in X-CSRF-Token. Errors are RFC 9457 problem+json; an
// ApiError carries the `detail` to show, and for a 429 when to retry (Retry-After).

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfter: number | null = null,
  ) {
    super(message);
  }
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);
// These answer 401 for a wrong password: that is the form's error, not a lost session.
const NO_SESSION_PATHS = new Set(["/auth/login", "/auth/register", "/auth/password"]);

let unauthorized: () => void = () => {};

/** What to do when the session is gone (revoked, expired): back to sign-in. */
export function onUnauthorized(handler: () => void): void {
  unauthorized = handler;
}

// The readable cookie holding the CSRF token: `csrf_cookie` of /console/config.json
// (the gateway's CSRF_COOKIE_NAME), this until it is known.
let csrfCookie = "csrf_token";

export function useCsrfCookie(name: string): void {
  csrfCookie = name;
}

export function csrfToken(): string {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === csrfCookie) return decodeURIComponent(value.join("="));
  }
  return "";
}

/** Seconds to wait, from a Retry-After header (delta-seconds or an HTTP date). */
export function retryAfterSeconds(value: string | null): number | null {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

/** The message a failed response carries: its problem `detail` (and field errors). */
async function errorOf(response: Response): Promise<ApiError> {
  const retry = response.status === 429 ? retryAfterSeconds(response.headers.get("Retry-After")) : null;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body: unknown = await response.json();
    if (body && typeof body === "object") {
      const problem = body as { detail?: unknown; title?: unknown; errors?: unknown };
      if (typeof problem.detail === "string" && problem.detail) message = problem.detail;
      else if (typeof problem.title === "string" && problem.title) message = problem.title;
      if (Array.isArray(problem.errors)) {
        const fields = problem.errors
          .map((e: { loc?: unknown[]; msg?: string }) => `${(e.loc ?? []).slice(1).join(".")}: ${e.msg ?? ""}`)
          .join("; ");
        if (fields) message = `${message} (${fields})`;
      }
    }
  } catch {
    // not JSON: the status line is all there is
  }
  if (retry !== null) {
    const at = new Date(Date.now() + retry * 1000).toLocaleTimeString();
    message = `${message} You can try again at ${at} (in ${retry} s).`;
  }
  return new ApiError(response.status, message, retry);
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Finish the request even if the page goes away (sign-out). */
  keepalive?: boolean;
}

/** The raw response of a successful call (a stream reads its body); throws ApiError. */
export async function call(method: string, path: string, body?: unknown, options: CallOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!SAFE.has(method)) headers["X-CSRF-Token"] = csrfToken();
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal: options.signal,
      keepalive: options.keepalive,
    });
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError(0, "The gateway did not answer: check your connection and try again.");
  }
  if (response.ok) return response;
  const error = await errorOf(response);
  if (response.status === 401 && !NO_SESSION_PATHS.has(path)) unauthorized();
  throw error;
}

/** A call's JSON answer (undefined for 204). */
export async function api<T>(method: string, path: string, body?: unknown, options?: CallOptions): Promise<T> {
  const response = await call(method, path, body, options);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** A query string from the non-empty values. */
export function query(params: Record<string, string | number | null | undefined>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// The API's shapes the console reads (see /openapi.json).
export interface Me {
  id: string;
  email: string;
  name: string;
  roles: string[];
  permissions: string[];
}

export interface Policy {
  max_budget_usd?: string | null;
  budget_period?: string | null;
  allowed_models?: string[] | null;
  rpm_limit?: number | null;
  tpm_limit?: number | null;
  spend_usd?: string | null;
  budget_remaining_usd?: string | null;
}

export interface LoginResponse {
  user: Me;
  csrf_token: string;
  expires_at: string;
}

export interface Page<T> {
  data: T[];
  next_cursor: string | null;
}
