// Provider credentials (the key typed into a masked field, shown back only as its last
// four characters) and model aliases.
import { useState } from "preact/hooks";
import { api } from "../api";
import { Checkbox, DeleteButton, ErrorNote, Field, FormCard, listOf, orDash, Table, useAction, useLoad, useSession, when } from "../ui";

interface Credential {
  id: string;
  provider: string;
  name: string;
  base_url: string | null;
  api_version: string | null;
  shared: boolean;
  key_hint: string;
  created_at: string;
}

interface Alias {
  alias: string;
  targets: { model: string; credential_id: string | null; weight: number | null }[];
  shared: boolean;
  strategy: string;
  created_at: string;
}

const PROVIDERS = ["openai", "huggingface", "azure", "anthropic"];

export function Providers() {
  const { can } = useSession();
  return (
    <section>
      <h1>Providers</h1>
      {can("providers:manage") && <Credentials shared={can("providers:manage_shared")} />}
      <Aliases writes={can("providers:manage")} shared={can("providers:manage_shared")} />
    </section>
  );
}

function Credentials({ shared }: { shared: boolean }) {
  const list = useLoad(() => api<Credential[]>("GET", "/v1/providers/credentials"), []);
  const remove = useAction();
  return (
    <>
      <AddCredential shared={shared} onAdded={list.reload} />
      <h2>Credentials</h2>
      <ErrorNote error={list.error ?? remove.error} />
      <Table
        id="credentials"
        columns={["Name", "Provider", "Base URL", "Key", "Shared", "Added", ""]}
        rows={list.data}
        empty="No credentials yet."
        row={(c) => (
          <tr key={c.id}>
            <td>{c.name}</td>
            <td>{c.provider}</td>
            <td class="clip">{orDash(c.base_url)}</td>
            <td>
              <code>…{c.key_hint}</code>
            </td>
            <td>{c.shared ? "yes" : "no"}</td>
            <td>{when(c.created_at)}</td>
            <td>
              {(!c.shared || shared) && (
                <DeleteButton name={c.name} path={`/v1/providers/credentials/${encodeURIComponent(c.id)}`} action={remove} done={list.reload} />
              )}
            </td>
          </tr>
        )}
      />
    </>
  );
}

function AddCredential({ shared, onAdded }: { shared: boolean; onAdded: () => void }) {
  const [provider, setProvider] = useState("openai");
  const [name, setName] = useState("");
  const [key, setKey] = useState("");
  const [baseUrl, setBaseUrl] = useState("");
  const [apiVersion, setApiVersion] = useState("");
  const [isShared, setShared] = useState(false);
  const action = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void action.run(async () => {
      await api("POST", "/v1/providers/credentials", {
        provider,
        name,
        api_key: key,
        base_url: baseUrl.trim() || null,
        api_version: provider === "azure" ? apiVersion.trim() || null : null,
        shared: isShared,
      });
      setKey("");
      setName("");
      setBaseUrl("");
      onAdded();
    });
  };
  return (
    <FormCard id="add-credential" title="Add a credential" submit="Add credential" action={action} onSubmit={submit}>
      <Field label="Provider">
        <select name="provider" value={provider} onChange={(e) => setProvider(e.currentTarget.value)}>
          {PROVIDERS.map((p) => (
            <option key={p} value={p}>
              {p}
            </option>
          ))}
        </select>
      </Field>
      <Field label="Name">
        <input name="credential-name" required maxLength={200} value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <Field label="API key" hint="Stored encrypted; shown back only as its last four characters.">
        <input type="password" name="api-key" autocomplete="off" required value={key} onInput={(e) => setKey(e.currentTarget.value)} />
      </Field>
      <Field label="Base URL" hint="Empty: the provider's own. An OpenAI-compatible server's /v1 URL.">
        <input type="url" name="base-url" value={baseUrl} onInput={(e) => setBaseUrl(e.currentTarget.value)} />
      </Field>
      {provider === "azure" && (
        <Field label="API version" hint="e.g. 2024-10-21">
          <input name="api-version" value={apiVersion} onInput={(e) => setApiVersion(e.currentTarget.value)} />
        </Field>
      )}
      {shared && <Checkbox label="Shared with everyone" checked={isShared} onChange={setShared} />}
    </FormCard>
  );
}

function Aliases({ writes, shared }: { writes: boolean; shared: boolean }) {
  const list = useLoad(() => api<Alias[]>("GET", "/v1/providers/aliases"), []);
  const [alias, setAlias] = useState("");
  const [targets, setTargets] = useState("");
  const [strategy, setStrategy] = useState("ordered");
  const [isShared, setShared] = useState(false);
  const create = useAction();
  const remove = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void create.run(async () => {
      await api("POST", "/v1/providers/aliases", {
        alias,
        targets: (listOf(targets) ?? []).map((model) => ({ model })),
        strategy,
        shared: isShared,
      });
      setAlias("");
      setTargets("");
      list.reload();
    });
  };
  return (
    <>
      {writes && (
        <FormCard id="add-alias" title="Add an alias" submit="Add alias" action={create} onSubmit={submit}>
          <Field label="Alias">
            <input name="alias" required value={alias} onInput={(e) => setAlias(e.currentTarget.value)} />
          </Field>
          <Field label="Targets" hint="provider/model names, comma-separated, in order (fallbacks).">
            <input name="targets" required value={targets} onInput={(e) => setTargets(e.currentTarget.value)} />
          </Field>
          <Field label="Strategy">
            <select value={strategy} onChange={(e) => setStrategy(e.currentTarget.value)}>
              <option value="ordered">ordered</option>
              <option value="weighted">weighted</option>
              <option value="least-latency">least-latency</option>
            </select>
          </Field>
          {shared && <Checkbox label="Shared with everyone" checked={isShared} onChange={setShared} />}
        </FormCard>
      )}
      <h2>Aliases</h2>
      <ErrorNote error={list.error ?? remove.error} />
      <Table
        id="aliases"
        columns={["Alias", "Targets", "Strategy", "Shared", "Created", writes ? "" : null]}
        rows={list.data}
        empty="No aliases."
        row={(a) => (
          <tr key={`${a.alias}-${a.shared}`}>
            <td>{a.alias}</td>
            <td>{a.targets.map((t) => t.model).join(" → ")}</td>
            <td>{a.strategy}</td>
            <td>{a.shared ? "yes" : "no"}</td>
            <td>{when(a.created_at)}</td>
            {writes && (
              <td>
                {(!a.shared || shared) && (
                  <DeleteButton name={a.alias} path={`/v1/providers/aliases/${encodeURIComponent(a.alias)}?shared=${a.shared}`} action={remove} done={list.reload} />
                )}
              </td>
            )}
          </tr>
        )}
      />
    </>
  );
}
