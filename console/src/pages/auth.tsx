// Sign in, register, and your account: password and sessions.
import { useState } from "preact/hooks";
import { api, type LoginResponse, type Me } from "../api";
import { DeleteButton, ErrorNote, Field, Table, useAction, useLoad, when } from "../ui";

export function SignIn({ onSignedIn, next }: { onSignedIn: (me: Me) => void; next: string }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const action = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void action.run(async () => {
      const answer = await api<LoginResponse>("POST", "/auth/login", { email, password });
      setPassword("");
      onSignedIn(answer.user);
    });
  };
  return (
    <section class="narrow">
      <h1>Sign in to the console</h1>
      <form onSubmit={submit}>
        <Field label="Email">
          <input type="email" name="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </Field>
        <Field label="Password">
          <input type="password" name="password" autocomplete="current-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
        </Field>
        <ErrorNote error={action.error} />
        <button type="submit" class="primary" disabled={action.busy}>
          Sign in
        </button>
      </form>
      <p>
        No account? <a href={`#/register${next !== "/" ? `?next=${encodeURIComponent(next)}` : ""}`}>Register</a>
      </p>
    </section>
  );
}

export function Register({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [email, setEmail] = useState("");
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const action = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void action.run(async () => {
      await api("POST", "/auth/register", { email, name, password });
      const answer = await api<LoginResponse>("POST", "/auth/login", { email, password });
      setPassword("");
      onSignedIn(answer.user);
    });
  };
  return (
    <section class="narrow">
      <h1>Register</h1>
      <form onSubmit={submit}>
        <Field label="Email">
          <input type="email" name="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </Field>
        <Field label="Name">
          <input name="name" autocomplete="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field label="Password" hint="A long passphrase; common passwords are refused.">
          <input type="password" name="password" autocomplete="new-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
        </Field>
        <ErrorNote error={action.error} />
        <button type="submit" class="primary" disabled={action.busy}>
          Register and sign in
        </button>
      </form>
      <p>
        Have an account? <a href="#/signin">Sign in</a>
      </p>
    </section>
  );
}

interface SessionRow {
  id: string;
  created_at: string;
  last_seen_at: string;
  expires_at: string;
  ip: string;
  user_agent: string;
  current: boolean;
}

export function Account({ me, onSignedOut }: { me: Me; onSignedOut: () => void }) {
  const sessions = useLoad(() => api<SessionRow[]>("GET", "/auth/sessions"), []);
  const [current, setCurrent] = useState("");
  const [fresh, setFresh] = useState("");
  const [done, setDone] = useState(false);
  const change = useAction();
  const revoke = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    setDone(false);
    void change.run(async () => {
      await api<LoginResponse>("POST", "/auth/password", { current_password: current, new_password: fresh });
      setCurrent("");
      setFresh("");
      setDone(true);
      sessions.reload();
    });
  };
  return (
    <section>
      <h1>Your account</h1>
      <p>
        Signed in as <strong>{me.email}</strong> ({me.roles.join(", ")})
      </p>
      <h2>Change password</h2>
      <form onSubmit={submit} class="row">
        <input type="email" autocomplete="username" value={me.email} readOnly hidden />
        <Field label="Current password">
          <input type="password" autocomplete="current-password" required value={current} onInput={(e) => setCurrent(e.currentTarget.value)} />
        </Field>
        <Field label="New password">
          <input type="password" autocomplete="new-password" required value={fresh} onInput={(e) => setFresh(e.currentTarget.value)} />
        </Field>
        <button type="submit" class="primary" disabled={change.busy}>
          Change password
        </button>
      </form>
      <ErrorNote error={change.error} />
      {done && <p role="status">Password changed. Your other sessions were signed out.</p>}
      <h2>Your sessions</h2>
      <ErrorNote error={sessions.error ?? revoke.error} />
      <Table
        id="sessions"
        columns={["Started", "Last seen", "Expires", "IP", "Browser", ""]}
        rows={sessions.data}
        empty="No sessions."
        row={(s) => (
          <tr key={s.id}>
            <td>{when(s.created_at)}</td>
            <td>{when(s.last_seen_at)}</td>
            <td>{when(s.expires_at)}</td>
            <td>{s.ip}</td>
            <td class="clip">{s.user_agent}</td>
            <td>
              {s.current ? (
                <em>this one</em>
              ) : (
                <DeleteButton label="Revoke" name={`session from ${s.ip}`} path={`/auth/sessions/${encodeURIComponent(s.id)}`} action={revoke} done={sessions.reload} />
              )}
            </td>
          </tr>
        )}
      />
      <p>
        <button type="button" onClick={onSignedOut}>
          Sign out
        </button>
      </p>
    </section>
  );
}
