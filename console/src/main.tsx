// The console: one page, hash-routed (#/keys, #/usage, ...), talking only to the public
// API through the gateway with the session cookie and CSRF header (see api.ts).
//
// Private data lives only in the mounted pages' state. Signing out, or losing the session
// (any 401), drops `me`, which unmounts every page (their data and DOM go with them), and
// the sign-in page keeps where the user was (#/signin?next=/usage). The session is checked
// again on every route change and when the browser shows this page from its back/forward
// cache (pageshow, persisted), so the back button never brings private data back.
import { render } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, onUnauthorized, useCsrfCookie, type Me } from "./api";
import "./console.css";
import { Admin } from "./pages/admin";
import { Account, Register, SignIn } from "./pages/auth";
import { Calls } from "./pages/calls";
import { Collections } from "./pages/collections";
import { Keys } from "./pages/keys";
import { forgetCalls, Playground } from "./pages/playground";
import { Providers } from "./pages/providers";
import { UsagePage } from "./pages/usage";
import { currentRoute, navigate, safeNext, SessionContext, useRoute, type Session } from "./ui";

interface Page {
  path: string;
  label: (me: Me) => string;
  shown: (can: (p: string) => boolean) => boolean;
}

const PAGES: Page[] = [
  { path: "/keys", label: () => "API keys", shown: () => true },
  { path: "/providers", label: () => "Providers", shown: (can) => can("models:read") },
  { path: "/playground", label: () => "Playground", shown: (can) => can("models:read") },
  { path: "/usage", label: () => "Usage", shown: (can) => can("telemetry:read_own") },
  { path: "/calls", label: () => "Call log", shown: (can) => can("telemetry:read_own") },
  { path: "/collections", label: () => "Collections", shown: (can) => can("embeddings:read") },
  {
    path: "/admin",
    label: (me) => (me.permissions.includes("users:manage") || me.permissions.includes("audit:read") ? "Admin" : "Teams"),
    shown: () => true,
  },
  { path: "/account", label: () => "Account", shown: () => true },
];

const PUBLIC = new Set(["/signin", "/register"]);

/** The gateway's /console/config.json: the trace viewer's URL template (null: trace ids
 * are shown without a link) and the CSRF cookie's name. Missing or broken: the defaults. */
async function loadConfig(): Promise<string | null> {
  try {
    const response = await fetch("config.json", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return null;
    const config = (await response.json()) as { trace_url?: unknown; csrf_cookie?: unknown };
    if (typeof config.csrf_cookie === "string" && config.csrf_cookie) useCsrfCookie(config.csrf_cookie);
    return typeof config.trace_url === "string" && config.trace_url.includes("{trace_id}") ? config.trace_url : null;
  } catch {
    return null;
  }
}

function App() {
  const route = useRoute();
  // undefined: not known yet (checking); null: signed out.
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [traceUrl, setTraceUrl] = useState<string | null>(null);
  const [menuOpen, setMenuOpen] = useState(false);
  const main = useRef<HTMLElement>(null);

  const forget = useCallback(() => {
    forgetCalls();
    setMe(null);
  }, []);

  // A 401 signs out (onUnauthorized); another failure (the gateway unreachable for a
  // moment) keeps a known session, and shows sign-in when there was none yet.
  const check = useCallback(() => {
    api<Me>("GET", "/auth/me").then(setMe, (reason: unknown) => {
      if (reason instanceof ApiError && reason.status === 401) forget();
      else setMe((known) => (known === undefined ? null : known));
    });
  }, [forget]);

  useEffect(() => {
    onUnauthorized(() => {
      forget();
      const here = currentRoute();
      if (!PUBLIC.has(here.path)) navigate(`/signin?next=${encodeURIComponent(here.full)}`, true);
    });
    void loadConfig().then(setTraceUrl);
    check();
    const shown = (event: PageTransitionEvent) => {
      if (event.persisted) {
        // Back from another page: forget what was shown, ask who is signed in again.
        setMe(undefined);
        check();
      }
    };
    addEventListener("pageshow", shown);
    return () => removeEventListener("pageshow", shown);
  }, [check, forget]);

  // Every route change: the session may have ended elsewhere (a 401 sends us to sign-in).
  const first = useRef(true);
  useEffect(() => {
    setMenuOpen(false);
    if (first.current) {
      first.current = false;
      return;
    }
    if (me) check();
    // After following a link, focus moves to the new page's content (not while typing in it).
    const active = document.activeElement;
    if (!active || active === document.body || !main.current?.contains(active)) main.current?.focus();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [route.full]);

  // Signed out on a private page: to sign-in, remembering the page.
  // (The location itself, not `route`: sign-out has just replaced it, before hashchange.)
  useEffect(() => {
    const here = currentRoute();
    if (me === null && !PUBLIC.has(here.path)) navigate(`/signin?next=${encodeURIComponent(here.full)}`, true);
    if (me && (PUBLIC.has(here.path) || here.path === "/")) {
      const next = safeNext(here.params.get("next"));
      navigate(next === "/" ? "/keys" : next, true);
    }
  }, [me, route.full]);

  const signedIn = (user: Me) => {
    setMe(user);
  };

  // The private pages go first (at once, whatever the gateway says), then the session.
  const signOut = async () => {
    navigate("/signin", true);
    forget();
    try {
      await api("POST", "/auth/logout", undefined, { keepalive: true });
    } catch {
      // already signed out elsewhere, or the gateway is gone: nothing more to forget here
    }
  };

  if (me === undefined) {
    return (
      <main id="main" class="center">
        <p role="status">Checking your session…</p>
      </main>
    );
  }

  if (me === null) {
    const next = safeNext(route.params.get("next"));
    return (
      <main id="main" ref={main} tabIndex={-1}>
        <p class="brand">LLM platform console</p>
        {route.path === "/register" ? <Register onSignedIn={signedIn} /> : <SignIn next={next} onSignedIn={signedIn} />}
      </main>
    );
  }

  const can = (permission: string) => me.permissions.includes(permission);
  const session: Session = { me, can, traceUrl };
  const pages = PAGES.filter((p) => p.shown(can));
  return (
    <SessionContext.Provider value={session}>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); main.current?.focus(); }}>
        Skip to content
      </a>
      <header class="top">
        <span class="brand">LLM platform console</span>
        <button type="button" class="menu" aria-expanded={menuOpen} aria-controls="nav" onClick={() => setMenuOpen(!menuOpen)}>
          Menu
        </button>
        <nav id="nav" aria-label="Main" class={menuOpen ? "open" : ""}>
          <ul>
            {pages.map((p) => (
              <li key={p.path}>
                <a href={`#${p.path}`} aria-current={route.path === p.path ? "page" : undefined}>
                  {p.label(me)}
                </a>
              </li>
            ))}
            <li>
              <button type="button" class="link" onClick={() => void signOut()}>
                Sign out
              </button>
            </li>
          </ul>
        </nav>
        <span class="who" title={me.roles.join(", ")}>
          {me.email}
        </span>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <Routed path={route.path} me={me} signOut={() => void signOut()} />
      </main>
    </SessionContext.Provider>
  );
}

function Routed({ path, me, signOut }: { path: string; me: Me; signOut: () => void }) {
  switch (path) {
    case "/keys":
      return <Keys />;
    case "/providers":
      return <Providers />;
    case "/playground":
      return <Playground />;
    case "/usage":
      return <UsagePage />;
    case "/calls":
      return <Calls />;
    case "/collections":
      return <Collections />;
    case "/admin":
      return <Admin />;
    case "/account":
      return <Account me={me} onSignedOut={signOut} />;
    case "/":
    case "/signin":
    case "/register":
      return <p role="status">Loading…</p>;
    default:
      return (
        <section>
          <h1>Not found</h1>
          <p>
            No page here. <a href="#/keys">Your API keys</a>
          </p>
        </section>
      );
  }
}

render(<App />, document.getElementById("app")!);
