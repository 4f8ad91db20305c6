// Small shared pieces: hash routing, the signed-in context, loading, errors, formatting.
import { cloneElement, createContext, isValidElement, type ComponentChildren, type VNode } from "preact";
import { useCallback, useContext, useEffect, useId, useRef, useState } from "preact/hooks";
import { api, ApiError, type Me } from "./api";

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

export interface Action {
  busy: boolean;
  error: string | null;
  run: (action: () => Promise<void>) => Promise<void>;
  clear: () => void;
}

/** Runs an action (a form's submit, a button), keeping its error and busy state. */
export function useAction(): Action {
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
  const yes = useRef<HTMLButtonElement>(null);
  // The button pressed is replaced: keyboard focus moves on to the confirmation.
  useEffect(() => {
    if (asking) yes.current?.focus();
  }, [asking]);
  if (!asking)
    return (
      <button type="button" class="danger" aria-label={`${label} ${name}`} onClick={() => setAsking(true)}>
        {label}
      </button>
    );
  return (
    <span class="confirm">
      <button
        ref={yes}
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

// --- tables
/** A column heading; `num` right-aligns figures; "" is the (unnamed) actions column. */
export type Column = string | { label: string; num: true } | null;

export function num(label: string): Column {
  return { label, num: true };
}

/** The rows in a scrolling table (its own horizontal scroll on a narrow screen), `empty`
 * when there are none, nothing while loading. Null columns are left out. */
export function Table<T>({ id, columns, rows, empty, row }: { id?: string; columns: Column[]; rows: T[] | undefined; empty: string; row: (item: T) => VNode }) {
  if (!rows) return null;
  if (rows.length === 0) return <p>{empty}</p>;
  return (
    <div class="scroll">
      <table id={id}>
        <thead>
          <tr>
            {columns.map((column, index) =>
              column === null ? null : typeof column === "object" ? (
                <th key={index} class="num">
                  {column.label}
                </th>
              ) : column === "" ? (
                <th key={index}>
                  <span class="sr-only">Actions</span>
                </th>
              ) : (
                <th key={index}>{column}</th>
              ),
            )}
          </tr>
        </thead>
        <tbody>{rows.map(row)}</tbody>
      </table>
    </div>
  );
}

/** Deletes `path` after an inline confirmation, then `done` (the list's reload); the
 * error lands in `action`. */
export function DeleteButton({ label = "Delete", name, path, action, done }: { label?: string; name: string; path: string; action: Action; done: () => void }) {
  return (
    <ConfirmButton
      label={label}
      name={name}
      onConfirm={() =>
        void action.run(async () => {
          await api("DELETE", path);
          done();
        })
      }
    />
  );
}

/** A titled form in a card: its fields in a grid, its error, its submit button. */
export function FormCard({ id, title, submit, action, onSubmit, children }: { id: string; title: string; submit: string; action: Action; onSubmit: (event: Event) => void; children: ComponentChildren }) {
  return (
    <form class="card" onSubmit={onSubmit} aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      <div class="grid">{children}</div>
      <ErrorNote error={action.error} />
      <button type="submit" class="primary" disabled={action.busy}>
        {submit}
      </button>
    </form>
  );
}

export function Checkbox({ label, checked, onChange }: { label: string; checked: boolean; onChange: (checked: boolean) => void }) {
  return (
    <label class="check">
      <input type="checkbox" checked={checked} onChange={(e) => onChange(e.currentTarget.checked)} /> {label}
    </label>
  );
}

/** The budget periods the API knows. */
export function PeriodOptions() {
  return (
    <>
      {["day", "week", "month", "total"].map((period) => (
        <option key={period} value={period}>
          {period}
        </option>
      ))}
    </>
  );
}

// --- keyset paging: the API's cursors go forward only, so the ones before are kept here.
export interface Cursors {
  cursor: string | null;
  depth: number;
  first: () => void;
  back: () => void;
  forward: (next: string) => void;
}

export function useCursors(): Cursors {
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  return {
    cursor: cursors[cursors.length - 1],
    depth: cursors.length,
    first: () => setCursors([null]),
    back: () => setCursors(cursors.slice(0, -1)),
    forward: (next) => setCursors([...cursors, next]),
  };
}

/** First / previous / next page buttons; `next` is the API's next_cursor. */
export function Pager({ pages, next, what }: { pages: Cursors; next: string | null | undefined; what: string }) {
  return (
    <div class="actions" role="group" aria-label={`Pages of ${what}`}>
      {pages.depth > 1 && (
        <button type="button" onClick={pages.first}>
          First page
        </button>
      )}
      {pages.depth > 1 && (
        <button type="button" onClick={pages.back}>
          Previous page
        </button>
      )}
      {next && (
        <button type="button" onClick={() => pages.forward(next)}>
          Next page
        </button>
      )}
    </div>
  );
}
