// Provider credentials (the key typed into a masked field, shown back only as its last
// four characters) and model aliases.
import { useState } from "preact/hooks";
import { api } from "../api";
import { ConfirmButton, ErrorNote, Field, listOf, orDash, useAction, useLoad, useSession, when } from "../ui";

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
      {list.data && list.data.length === 0 && <p>No credentials yet.</p>}
      {list.data && list.data.length > 0 && (
        <div class="scroll">
          <table id="credentials">
            <thead>
              <tr>
                <th>Name</th>
                <th>Provider</th>
                <th>Base URL</th>
                <th>Key</th>
                <th>Shared</th>
                <th>Added</th>
                <th>
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {list.data.map((c) => (
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
                      <ConfirmButton
                        label="Delete"
                        name={c.name}
                        onConfirm={() =>
                          void remove.run(async () => {
                            await api("DELETE", `/v1/providers/credentials/${encodeURIComponent(c.id)}`);
                            list.reload();
                          })
                        }
                      />
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
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
    <form class="card" onSubmit={submit} aria-labelledby="add-credential">
      <h2 id="add-credential">Add a credential</h2>
      <div class="grid">
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
        {shared && (
          <label class="check">
            <input type="checkbox" checked={isShared} onChange={(e) => setShared(e.currentTarget.checked)} /> Shared with everyone
          </label>
        )}
      </div>
      <ErrorNote error={action.error} />
      <button type="submit" class="primary" disabled={action.busy}>
        Add credential
      </button>
    </form>
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
        <form class="card" onSubmit={submit} aria-labelledby="add-alias">
          <h2 id="add-alias">Add an alias</h2>
          <div class="grid">
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
            {shared && (
              <label class="check">
                <input type="checkbox" checked={isShared} onChange={(e) => setShared(e.currentTarget.checked)} /> Shared with everyone
              </label>
            )}
          </div>
          <ErrorNote error={create.error} />
          <button type="submit" class="primary" disabled={create.busy}>
            Add alias
          </button>
        </form>
      )}
      <h2>Aliases</h2>
      <ErrorNote error={list.error ?? remove.error} />
      {list.data && list.data.length === 0 && <p>No aliases.</p>}
      {list.data && list.data.length > 0 && (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th>Alias</th>
                <th>Targets</th>
                <th>Strategy</th>
                <th>Shared</th>
                <th>Created</th>
                {writes && (
                  <th>
                    <span class="sr-only">Actions</span>
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {list.data.map((a) => (
                <tr key={`${a.alias}-${a.shared}`}>
                  <td>{a.alias}</td>
                  <td>{a.targets.map((t) => t.model).join(" → ")}</td>
                  <td>{a.strategy}</td>
                  <td>{a.shared ? "yes" : "no"}</td>
                  <td>{when(a.created_at)}</td>
                  {writes && (
                    <td>
                      {(!a.shared || shared) && (
                        <ConfirmButton
                          label="Delete"
                          name={a.alias}
                          onConfirm={() =>
                            void remove.run(async () => {
                              await api("DELETE", `/v1/providers/aliases/${encodeURIComponent(a.alias)}?shared=${a.shared}`);
                              list.reload();
                            })
                          }
                        />
                      )}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
