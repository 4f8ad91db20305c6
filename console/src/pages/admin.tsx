// Administration: users and their roles, the audit log, teams and their budgets. Each part
// shows only for the permission its API needs (teams: everyone sees the teams they are in).
import { useState } from "preact/hooks";
import { api, query, type Page, type Policy } from "../api";
import { DeleteButton, ErrorNote, Field, orDash, Pager, PeriodOptions, Table, useCursors, useAction, useLoad, useSession, usd, when } from "../ui";

interface User extends Policy {
  id: string;
  email: string;
  name: string;
  roles: string[];
  disabled: boolean;
  created_at: string;
}

interface AuditEvent {
  id: number;
  occurred_at: string;
  action: string;
  outcome: string;
  actor_id: string | null;
  target_type: string | null;
  target_id: string | null;
  ip: string | null;
  detail: Record<string, unknown>;
}

interface Team extends Policy {
  id: string;
  name: string;
  role: string | null;
  created_at: string;
}

const ROLES = ["admin", "member", "viewer"];

export function Admin() {
  const { can } = useSession();
  return (
    <section>
      <h1>Administration</h1>
      {can("users:manage") && <Users />}
      <Teams />
      {can("audit:read") && <Audit />}
    </section>
  );
}

function Users() {
  const pages = useCursors();
  const cursor = pages.cursor;
  const page = useLoad(() => api<Page<User>>("GET", `/auth/users${query({ limit: 50, cursor })}`), [cursor]);
  return (
    <>
        <h2>Users</h2>
        <ErrorNote error={page.error} />
        <Table id="users" columns={["Email", "Name", "Role", "Disabled", "Created", ""]} rows={page.data?.data} empty="No users." row={(u) => <UserRow key={u.id} user={u} onSaved={page.reload} />} />
        <Pager pages={pages} next={page.data?.next_cursor} what="users" />
    </>
  );
}

function UserRow({ user, onSaved }: { user: User; onSaved: () => void }) {
  const [role, setRole] = useState(user.roles[0] ?? "member");
  const [disabled, setDisabled] = useState(user.disabled);
  const save = useAction();
  const changed = role !== (user.roles[0] ?? "member") || disabled !== user.disabled;
  return (
    <tr data-user={user.email}>
      <td>
        {user.email}
        <br />
        <code class="hint">{user.id}</code>
      </td>
      <td>{user.name}</td>
      <td>
        <select aria-label={`Role of ${user.email}`} value={role} onChange={(e) => setRole(e.currentTarget.value)}>
          {ROLES.map((r) => (
            <option key={r} value={r}>
              {r}
            </option>
          ))}
        </select>
      </td>
      <td>
        <input type="checkbox" aria-label={`${user.email} disabled`} checked={disabled} onChange={(e) => setDisabled(e.currentTarget.checked)} />
      </td>
      <td>{when(user.created_at)}</td>
      <td>
        <button
          type="button"
          disabled={!changed || save.busy}
          aria-label={`Save ${user.email}`}
          onClick={() =>
            void save.run(async () => {
              await api("PATCH", `/auth/users/${user.id}`, { roles: [role], disabled });
              onSaved();
            })
          }
        >
          Save
        </button>
        <ErrorNote error={save.error} />
      </td>
    </tr>
  );
}

function Teams() {
  const { can } = useSession();
  const pages = useCursors();
  const list = useLoad(() => api<Page<Team>>("GET", `/auth/teams${query({ limit: 50, cursor: pages.cursor })}`), [pages.cursor]);
  const [name, setName] = useState("");
  const create = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void create.run(async () => {
      await api("POST", "/auth/teams", { name });
      setName("");
      list.reload();
    });
  };
  return (
    <>
        <h2>Teams</h2>
        {can("teams:manage") && (
          <form class="row" onSubmit={submit} aria-label="Create a team">
            <Field label="New team name">
              <input name="team-name" required maxLength={200} value={name} onInput={(e) => setName(e.currentTarget.value)} />
            </Field>
            <button type="submit" class="primary" disabled={create.busy}>
              Create team
            </button>
          </form>
        )}
        <ErrorNote error={list.error ?? create.error} />
        <Table
          id="teams"
          columns={["Team", "Your role", "Spend", "Budget", ""]}
          rows={list.data?.data}
          empty="No teams."
          row={(t) => <TeamRow key={t.id} team={t} manages={can("teams:manage") || t.role === "owner"} />}
        />
        <Pager pages={pages} next={list.data?.next_cursor} what="teams" />
    </>
  );
}

function TeamRow({ team, manages }: { team: Team; manages: boolean }) {
  // The list has no spend: each team's own answer does.
  const detail = useLoad(() => api<Team>("GET", `/auth/teams/${team.id}`), [team.id]);
  const shown = detail.data ?? team;
  const [budget, setBudget] = useState(team.max_budget_usd ?? "");
  const [period, setPeriod] = useState(team.budget_period ?? "month");
  const save = useAction();
  const [open, setOpen] = useState(false);
  return (
    <>
      <tr>
        <td>{team.name}</td>
        <td>{orDash(team.role)}</td>
        <td>{usd(shown.spend_usd ?? "0")}</td>
        <td>{shown.max_budget_usd ? `${usd(shown.max_budget_usd)} / ${shown.budget_period ?? "total"}` : "—"}</td>
        <td>
          {manages && (
            <form
              class="inline"
              onSubmit={(e) => {
                e.preventDefault();
                void save.run(async () => {
                  await api("PATCH", `/auth/teams/${team.id}`, { max_budget_usd: budget.trim() || null, budget_period: budget.trim() ? period : null });
                  detail.reload();
                });
              }}
            >
              <input aria-label={`Budget of ${team.name} (USD)`} inputMode="decimal" size={8} value={budget} onInput={(e) => setBudget(e.currentTarget.value)} />
              <select aria-label={`Budget period of ${team.name}`} value={period} onChange={(e) => setPeriod(e.currentTarget.value)}>
                <PeriodOptions />
              </select>
              <button type="submit" disabled={save.busy}>
                Set budget
              </button>
              <ErrorNote error={save.error} />
            </form>
          )}
          <button type="button" aria-expanded={open} onClick={() => setOpen(!open)}>
            Members <span class="sr-only">of {team.name}</span>
          </button>
        </td>
      </tr>
      {open && (
        <tr>
          <td colSpan={5}>
            <Members team={team} manages={manages} />
          </td>
        </tr>
      )}
    </>
  );
}

interface Member {
  user_id: string;
  email: string;
  name: string;
  role: string;
  created_at: string;
}

/** A team's members; its owners (and admins) add them by user id and remove them. */
function Members({ team, manages }: { team: Team; manages: boolean }) {
  const list = useLoad(() => api<Page<Member>>("GET", `/auth/teams/${team.id}/members?limit=200`), [team.id]);
  const [userId, setUserId] = useState("");
  const [role, setRole] = useState("member");
  const add = useAction();
  const remove = useAction();
  return (
    <div role="region" aria-label={`Members of ${team.name}`}>
      <ErrorNote error={list.error ?? remove.error} />
      <Table
        columns={["Email", "Name", "Role", "Since", manages ? "" : null]}
        rows={list.data?.data}
        empty="No members yet."
        row={(m) => (
          <tr key={m.user_id}>
            <td>{m.email}</td>
            <td>{m.name}</td>
            <td>{m.role}</td>
            <td>{when(m.created_at)}</td>
            {manages && (
              <td>
                <DeleteButton label="Remove" name={`${m.email} from ${team.name}`} path={`/auth/teams/${team.id}/members/${m.user_id}`} action={remove} done={list.reload} />
              </td>
            )}
          </tr>
        )}
      />
      {manages && (
        <form
          class="row"
          aria-label={`Add a member to ${team.name}`}
          onSubmit={(e) => {
            e.preventDefault();
            void add.run(async () => {
              await api("PUT", `/auth/teams/${team.id}/members/${encodeURIComponent(userId.trim())}`, { role });
              setUserId("");
              list.reload();
            });
          }}
        >
          <Field label="User id" hint="From the users list (admins) or the user.">
            <input required value={userId} onInput={(e) => setUserId(e.currentTarget.value)} />
          </Field>
          <Field label="Team role">
            <select value={role} onChange={(e) => setRole(e.currentTarget.value)}>
              <option value="member">member</option>
              <option value="owner">owner</option>
            </select>
          </Field>
          <button type="submit" disabled={add.busy}>
            Add member
          </button>
        </form>
      )}
      <ErrorNote error={add.error} />
    </div>
  );
}

function Audit() {
  const [action, setAction] = useState("");
  const [applied, setApplied] = useState("");
  const pages = useCursors();
  const cursor = pages.cursor;
  const page = useLoad(() => api<Page<AuditEvent>>("GET", `/auth/audit${query({ limit: 50, cursor, action: applied })}`), [cursor, applied]);
  return (
    <>
        <h2>Audit log</h2>
        <form
          class="row"
          aria-label="Audit filter"
          onSubmit={(e) => {
            e.preventDefault();
            setApplied(action.trim());
            pages.first();
          }}
        >
          <Field label="Action">
            <input name="action" value={action} placeholder="auth.login" onInput={(e) => setAction(e.currentTarget.value)} />
          </Field>
          <button type="submit">Filter</button>
        </form>
        <ErrorNote error={page.error} />
        <Table
          id="audit"
          columns={["When", "Action", "Outcome", "Actor", "Target", "IP", "Detail"]}
          rows={page.data?.data}
          empty="No events."
          row={(e) => (
            <tr key={e.id}>
              <td>{when(e.occurred_at)}</td>
              <td>{e.action}</td>
              <td>{e.outcome}</td>
              <td class="clip">{orDash(e.actor_id)}</td>
              <td class="clip">{e.target_type ? `${e.target_type} ${e.target_id ?? ""}` : "—"}</td>
              <td>{orDash(e.ip)}</td>
              <td class="clip">
                <code>{Object.keys(e.detail).length ? JSON.stringify(e.detail) : ""}</code>
              </td>
            </tr>
          )}
        />
        <Pager pages={pages} next={page.data?.next_cursor} what="audit events" />
    </>
  );
}
