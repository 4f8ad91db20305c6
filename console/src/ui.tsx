// Small shared pieces: hash routing, the signed-in context, loading, errors, formatting.
import { cloneElement, createContext, isValidElement, type ComponentChildren } from "preact";
import { useCallback, useContext, useEffect, useId, useState } from "preact/hooks";
import { ApiError, type Me } from "./api";

// --- routing: `#/path?query`, so the gateway serves one page and a reload keeps the place.
export interface Route {
  path: string;
  params: URLSearchParams;
  full: string;
}

export function currentRoute(): Route {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?", 2);
  return { path: path || "/", params: new URLSearchParams(search), full: raw };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(currentRoute);
  useEffect(() => {
    const changed = () => setRoute(currentRoute());
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

export function navigate(path: string, replace = false): void {
  if (replace) location.replace(`#${path}`);
  else location.hash = path;
}

/** A `next` page to return to after sign-in: only a path of this console. */
export function safeNext(next: string | null): string {
  return next && /^\/[A-Za-z0-9/_\-?=&%.]*$/.test(next) && !next.startsWith("//") && !next.startsWith("/signin")
    ? next
    : "/";
}

// --- who is signed in, and what they may do.
export interface Session {
  me: Me;
  can: (permission: string) => boolean;
  traceUrl: string | null;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside a signed-in page");
  return session;
}

// --- loading data, with the error shown as the API gave it.
export interface Loaded<T> {
  data: T | undefined;
  error: string | null;
  loading: boolean;
  reload: () => void;
}

export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setLoading(true);
    load().then(
      (value) => {
        if (!live) return;
        setData(value);
        setError(null);
        setLoading(false);
      },
      (reason: unknown) => {
        if (!live) return;
        setError(messageOf(reason));
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload };
}

export function messageOf(reason: unknown): string {
  if (reason instanceof ApiError) return reason.message;
  if (reason instanceof Error) return reason.message;
  return String(reason);
}

/** Runs an action (a form's submit, a button), keeping its error and busy state. */
export function useAction(): {
  busy: boolean;
  error: string | null;
  run: (action: () => Promise<void>) => Promise<void>;
  clear: () => void;
} {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = useCallback(async (action: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await action();
    } catch (reason) {
      setError(messageOf(reason));
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, clear: () => setError(null) };
}

export function ErrorNote({ error }: { error: string | null }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error}
    </p>
  );
}

/** A labelled control (the label's `for`, the hint as its description): `children` is
 * the one control. */
export function Field({ label, children, hint }: { label: string; children: ComponentChildren; hint?: string }) {
  const id = useId();
  const hintId = `${id}-hint`;
  const control = isValidElement(children)
    ? cloneElement(children, { id, "aria-describedby": hint ? hintId : undefined } as Record<string, unknown>)
    : children;
  return (
    <div class="field">
      <label class="label" for={id}>
        {label}
      </label>
      {control}
      {hint && (
        <span class="hint" id={hintId}>
          {hint}
        </span>
      )}
    </div>
  );
}

/** A destructive button that asks once more, inline (no window.confirm). */
export function ConfirmButton({ label, onConfirm, name }: { label: string; onConfirm: () => void; name: string }) {
  const [asking, setAsking] = useState(false);
  if (!asking)
    return (
      <button type="button" class="danger" aria-label={`${label} ${name}`} onClick={() => setAsking(true)}>
        {label}
      </button>
    );
  return (
    <span class="confirm">
      <button
        type="button"
        class="danger"
        aria-label={`Confirm ${label.toLowerCase()} ${name}`}
        onClick={() => {
          setAsking(false);
          onConfirm();
        }}
      >
        Yes, {label.toLowerCase()}
      </button>
      <button type="button" onClick={() => setAsking(false)}>
        Cancel
      </button>
    </span>
  );
}

// --- formatting
export function when(value: string | null | undefined): string {
  if (!value) return "—";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

export function usd(value: string | null | undefined): string {
  if (value === null || value === undefined) return "—";
  return `$${value}`;
}

export function orDash(value: unknown): string {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

/** A number from an optional input ("" is none). */
export function optionalInt(value: string): number | null {
  return value.trim() === "" ? null : Number(value);
}

export function listOf(value: string): string[] | null {
  const items = value
    .split(/[,\n]/)
    .map((item) => item.trim())
    .filter(Boolean);
  return items.length ? items : null;
}

/** YYYY-MM-DD (UTC) of a date. */
export function isoDay(date: Date): string {
  return date.toISOString().slice(0, 10);
}

export function daysAgo(days: number): string {
  return isoDay(new Date(Date.now() - days * 86_400_000));
}

/** A UTC day range [from 00:00, the day after `to` 00:00) as the API's ISO bounds. */
export function dayBounds(from: string, to: string): { from: string; to: string } {
  const end = new Date(`${to}T00:00:00Z`);
  end.setUTCDate(end.getUTCDate() + 1);
  return { from: `${from}T00:00:00Z`, to: end.toISOString() };
}
