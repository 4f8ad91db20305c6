// API keys: create with a policy, the key shown once (with a copy button), list, revoke.
import { useState } from "preact/hooks";
import { api, type Page, type Policy } from "../api";
import { DeleteButton, ErrorNote, Field, FormCard, PeriodOptions, listOf, optionalInt, orDash, Table, useAction, useLoad, useSession, usd, when } from "../ui";

interface ApiKey extends Policy {
  id: string;
  name: string;
  prefix: string;
  team_id: string | null;
  scopes: string[] | null;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
}

interface Team {
  id: string;
  name: string;
  role: string | null;
}

export function Keys() {
  const { can } = useSession();
  const keys = useLoad(() => api<ApiKey[]>("GET", "/auth/api-keys"), []);
  const teams = useLoad(() => api<Page<Team>>("GET", "/auth/teams?limit=200"), []);
  const [created, setCreated] = useState<{ name: string; key: string } | null>(null);
  const revoke = useAction();
  const writes = can("api_keys:manage");
  return (
    <section>
      <h1>API keys</h1>
      {writes && (
        <CreateKey
          teams={(teams.data?.data ?? []).filter((t) => t.role !== null)}
          onCreated={(name, key) => {
            setCreated({ name, key });
            keys.reload();
          }}
        />
      )}
      {created && <NewKey name={created.name} secret={created.key} onDone={() => setCreated(null)} />}
      <h2>Your keys</h2>
      <ErrorNote error={keys.error ?? revoke.error} />
      <Table
        id="keys"
        columns={["Name", "Prefix", "Spend", "Budget", "Limits", "Models", "Last used", "Created", writes ? "" : null]}
        rows={keys.data}
        empty="No keys yet."
        row={(k) => (
          <tr key={k.id} data-key-id={k.id}>
            <td>{k.name}</td>
            <td>
              <code>{k.prefix}</code>
            </td>
            <td>{usd(k.spend_usd ?? "0")}</td>
            <td>{k.max_budget_usd ? `${usd(k.max_budget_usd)} / ${k.budget_period ?? "total"}` : "—"}</td>
            <td>{[k.rpm_limit && `${k.rpm_limit} rpm`, k.tpm_limit && `${k.tpm_limit} tpm`].filter(Boolean).join(", ") || "—"}</td>
            <td>{k.allowed_models ? k.allowed_models.join(", ") : "all"}</td>
            <td>{when(k.last_used_at)}</td>
            <td>{when(k.created_at)}</td>
            {writes && (
              <td>
                <DeleteButton label="Revoke" name={k.name} path={`/auth/api-keys/${encodeURIComponent(k.id)}`} action={revoke} done={keys.reload} />
              </td>
            )}
          </tr>
        )}
      />
    </section>
  );
}

function CreateKey({ teams, onCreated }: { teams: Team[]; onCreated: (name: string, key: string) => void }) {
  const [name, setName] = useState("");
  const [budget, setBudget] = useState("");
  const [period, setPeriod] = useState("month");
  const [rpm, setRpm] = useState("");
  const [tpm, setTpm] = useState("");
  const [models, setModels] = useState("");
  const [team, setTeam] = useState("");
  const action = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void action.run(async () => {
      const body = {
        name,
        max_budget_usd: budget.trim() || null,
        budget_period: budget.trim() ? period : null,
        rpm_limit: optionalInt(rpm),
        tpm_limit: optionalInt(tpm),
        allowed_models: listOf(models),
        team_id: team || null,
      };
      const answer = await api<{ key: string }>("POST", "/auth/api-keys", body);
      onCreated(name, answer.key);
      setName("");
      setBudget("");
      setRpm("");
      setTpm("");
      setModels("");
    });
  };
  return (
    <FormCard id="create-key" title="Create a key" submit="Create key" action={action} onSubmit={submit}>
      <Field label="Name">
        <input name="key-name" required maxLength={200} value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <Field label="Budget (USD)" hint="Empty: no budget.">
        <input name="budget" inputMode="decimal" pattern="[0-9]+(\.[0-9]+)?" value={budget} onInput={(e) => setBudget(e.currentTarget.value)} />
      </Field>
      <Field label="Budget period">
        <select value={period} onChange={(e) => setPeriod(e.currentTarget.value)}>
          <PeriodOptions />
        </select>
      </Field>
      <Field label="Requests a minute">
        <input type="number" min={1} name="rpm" value={rpm} onInput={(e) => setRpm(e.currentTarget.value)} />
      </Field>
      <Field label="Tokens a minute">
        <input type="number" min={1} name="tpm" value={tpm} onInput={(e) => setTpm(e.currentTarget.value)} />
      </Field>
      <Field label="Allowed models" hint="Comma-separated: names, aliases, globs (openai/*). Empty: all.">
        <input name="allowed-models" value={models} onInput={(e) => setModels(e.currentTarget.value)} />
      </Field>
      {teams.length > 0 && (
        <Field label="Team">
          <select value={team} onChange={(e) => setTeam(e.currentTarget.value)}>
            <option value="">none</option>
            {teams.map((t) => (
              <option key={t.id} value={t.id}>
                {t.name}
              </option>
            ))}
          </select>
        </Field>
      )}
    </FormCard>
  );
}

function NewKey({ name, secret, onDone }: { name: string; secret: string; onDone: () => void }) {
  const [copied, setCopied] = useState<string | null>(null);
  const copy = () => {
    navigator.clipboard.writeText(secret).then(
      () => setCopied("Copied."),
      () => setCopied("Could not copy: select the key and copy it by hand."),
    );
  };
  return (
    <div class="card notice" role="region" aria-label="New API key">
      <p>
        Your new key <strong>{name}</strong>. It is shown <strong>only this once</strong>: copy it now.
      </p>
      <p>
        <code id="new-key" class="secret">
          {secret}
        </code>
      </p>
      <button type="button" class="primary" onClick={copy}>
        Copy key
      </button>{" "}
      <button type="button" onClick={onDone}>
        Done
      </button>
      {copied && <span role="status"> {orDash(copied)}</span>}
    </div>
  );
}
