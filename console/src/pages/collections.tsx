// Collections: list (with each one's document count), create, add documents, and a query
// box with a metadata filter (the API's Mongo-style JSON, e.g. {"lang": "en"}).
import { useState } from "preact/hooks";
import { api } from "../api";
import { DeleteButton, ErrorNote, Field, FormCard, num, Table, useAction, useLoad, useSession } from "../ui";

interface Collection {
  id: string;
  name: string;
  description: string | null;
  model: string;
  dimension: number;
  metric: string;
  document_count: number | null;
}

interface Match {
  id: string;
  score: number;
  text: string | null;
  metadata: Record<string, unknown>;
}

/** A JSON object typed by the user, or an error saying why it is not one. */
function jsonObject(text: string, what: string): Record<string, unknown> | undefined {
  if (!text.trim()) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`The ${what} is not valid JSON.`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error(`The ${what} must be a JSON object.`);
  return value as Record<string, unknown>;
}

export function Collections() {
  const { can } = useSession();
  // The list does not count documents; each collection's own answer does.
  const list = useLoad(async () => {
    const collections = await api<Collection[]>("GET", "/v1/collections");
    return Promise.all(collections.map((c) => api<Collection>("GET", `/v1/collections/${c.id}`).catch(() => c)));
  }, []);
  const [open, setOpen] = useState<string | null>(null);
  const remove = useAction();
  const writes = can("embeddings:write");
  const selected = list.data?.find((c) => c.id === open) ?? null;
  return (
    <section>
      <h1>Collections</h1>
      {writes && <CreateCollection onCreated={list.reload} />}
      <h2>Your collections</h2>
      <ErrorNote error={list.error ?? remove.error} />
      <Table
        id="collections"
        columns={["Name", "Model", "Metric", num("Documents"), ""]}
        rows={list.data}
        empty="No collections yet."
        row={(c) => (
          <tr key={c.id}>
            <td>{c.name}</td>
            <td>{c.model}</td>
            <td>{c.metric}</td>
            <td class="num">{c.document_count ?? "—"}</td>
            <td>
              <button type="button" aria-expanded={open === c.id} onClick={() => setOpen(open === c.id ? null : c.id)}>
                {open === c.id ? "Close" : "Open"} <span class="sr-only">{c.name}</span>
              </button>{" "}
              {writes && (
                <DeleteButton
                  name={c.name}
                  path={`/v1/collections/${c.id}`}
                  action={remove}
                  done={() => {
                    if (open === c.id) setOpen(null);
                    list.reload();
                  }}
                />
              )}
            </td>
          </tr>
        )}
      />
      {selected && <CollectionDetail key={selected.id} collection={selected} writes={writes} onChanged={list.reload} />}
    </section>
  );
}

function CreateCollection({ onCreated }: { onCreated: () => void }) {
  const [name, setName] = useState("");
  const [model, setModel] = useState("local/all-MiniLM-L6-v2");
  const [metric, setMetric] = useState("cosine");
  const action = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void action.run(async () => {
      await api("POST", "/v1/collections", { name, model, metric });
      setName("");
      onCreated();
    });
  };
  return (
    <FormCard id="create-collection" title="Create a collection" submit="Create collection" action={action} onSubmit={submit}>
      <Field label="Name">
        <input name="collection-name" required maxLength={200} value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <Field label="Embedding model">
        <input name="collection-model" required value={model} onInput={(e) => setModel(e.currentTarget.value)} />
      </Field>
      <Field label="Metric">
        <select value={metric} onChange={(e) => setMetric(e.currentTarget.value)}>
          <option value="cosine">cosine</option>
          <option value="l2">l2</option>
          <option value="inner_product">inner_product</option>
        </select>
      </Field>
    </FormCard>
  );
}

function CollectionDetail({ collection, writes, onChanged }: { collection: Collection; writes: boolean; onChanged: () => void }) {
  const [docText, setDocText] = useState("");
  const [docId, setDocId] = useState("");
  const [docMeta, setDocMeta] = useState("");
  const [text, setText] = useState("");
  const [filter, setFilter] = useState("");
  const [topK, setTopK] = useState("5");
  const [matches, setMatches] = useState<Match[] | null>(null);
  const add = useAction();
  const ask = useAction();
  const addDocument = (event: Event) => {
    event.preventDefault();
    void add.run(async () => {
      const metadata = jsonObject(docMeta, "metadata");
      await api("POST", `/v1/collections/${collection.id}/documents`, {
        documents: [{ id: docId.trim() || undefined, text: docText, metadata: metadata ?? {} }],
      });
      setDocText("");
      setDocId("");
      onChanged();
    });
  };
  const runQuery = (event: Event) => {
    event.preventDefault();
    void ask.run(async () => {
      const parsed = jsonObject(filter, "filter");
      const body: Record<string, unknown> = { text, top_k: Number(topK) || 5 };
      if (parsed) body.filter = parsed;
      setMatches(await api<Match[]>("POST", `/v1/collections/${collection.id}/query`, body));
    });
  };
  return (
    <div class="card" role="region" aria-label={`Collection ${collection.name}`}>
      <h2>
        {collection.name} <small>({collection.document_count ?? 0} documents)</small>
      </h2>
      {writes && (
        <form onSubmit={addDocument}>
          <h3>Add a document</h3>
          <div class="grid">
            <Field label="Document id (optional)">
              <input value={docId} onInput={(e) => setDocId(e.currentTarget.value)} />
            </Field>
            <Field label="Metadata (JSON, optional)">
              <input value={docMeta} placeholder='{"lang": "en"}' onInput={(e) => setDocMeta(e.currentTarget.value)} />
            </Field>
          </div>
          <Field label="Document text">
            <textarea rows={3} required value={docText} onInput={(e) => setDocText(e.currentTarget.value)} />
          </Field>
          <ErrorNote error={add.error} />
          <button type="submit" class="primary" disabled={add.busy}>
            Add document
          </button>
        </form>
      )}
      <form onSubmit={runQuery}>
        <h3>Query</h3>
        <div class="grid">
          <Field label="Query text">
            <input name="query" required value={text} onInput={(e) => setText(e.currentTarget.value)} />
          </Field>
          <Field label="Metadata filter (JSON)" hint='e.g. {"lang": "en"}'>
            <input name="filter" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />
          </Field>
          <Field label="Results">
            <input type="number" min={1} max={100} value={topK} onInput={(e) => setTopK(e.currentTarget.value)} />
          </Field>
        </div>
        <ErrorNote error={ask.error} />
        <button type="submit" disabled={ask.busy}>
          Search
        </button>
      </form>
      <Table
        id="matches"
        columns={["Id", num("Score"), "Text", "Metadata"]}
        rows={matches ?? undefined}
        empty="No matches."
        row={(m) => (
          <tr key={m.id}>
            <td>{m.id}</td>
            <td class="num">{m.score.toFixed(4)}</td>
            <td>{m.text ?? "—"}</td>
            <td>
              <code>{JSON.stringify(m.metadata)}</code>
            </td>
          </tr>
        )}
      />
    </div>
  );
}
