// The call log: filters, keyset paging with the API's cursor (newest first), and each
// row's trace id linking to the trace viewer (the trace_url template of
// /console/config.json; plain text when none is configured).
import { useState } from "preact/hooks";
import { api, query, type Page } from "../api";
import { dayBounds, daysAgo, ErrorNote, Field, num, orDash, Pager, Table, useCursors, useLoad, useSession, usd, when } from "../ui";

interface CallRow {
  id: string;
  occurred_at: string;
  model: string;
  alias: string | null;
  operation: string;
  status: string;
  error_type: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  cost_usd: string | null;
  latency_ms: number | null;
  ttft_ms: number | null;
  stream: boolean;
  trace_id: string | null;
  cache: string | null;
}

interface Filters {
  model: string;
  status: string;
  from: string;
  to: string;
}

const PAGE_SIZE = 50;

export function traceLink(template: string | null, traceId: string): string | null {
  if (!template || !/^[0-9a-f]{16,64}$/i.test(traceId)) return null;
  return template.replace("{trace_id}", traceId);
}

export function Calls() {
  const { traceUrl } = useSession();
  const [draft, setDraft] = useState<Filters>({ model: "", status: "", from: daysAgo(29), to: daysAgo(0) });
  const [filters, setFilters] = useState<Filters>(draft);
  const pages = useCursors();
  const cursor = pages.cursor;
  const page = useLoad(
    () =>
      api<Page<CallRow>>(
        "GET",
        `/v1/calls${query({ limit: PAGE_SIZE, cursor, model: filters.model, status: filters.status, ...(filters.from && filters.to ? dayBounds(filters.from, filters.to) : {}) })}`,
      ),
    [filters, cursor],
  );
  const apply = (event: Event) => {
    event.preventDefault();
    setFilters({ ...draft });
    pages.first();
  };
  const set = (name: keyof Filters) => (event: Event) => setDraft({ ...draft, [name]: (event.currentTarget as HTMLInputElement).value });
  return (
    <section>
      <h1>Call log</h1>
      <form class="row" onSubmit={apply} aria-label="Filters">
        <Field label="Model">
          <input name="model" value={draft.model} onInput={set("model")} placeholder="openai/gpt-4o-mini" />
        </Field>
        <Field label="Status" hint="ok, error, or a status callers report">
          <input name="status" list="statuses" value={draft.status} onInput={set("status")} />
        </Field>
        <datalist id="statuses">
          <option value="ok" />
          <option value="error" />
        </datalist>
        <Field label="From (UTC day)">
          <input type="date" name="from" value={draft.from} onChange={set("from")} />
        </Field>
        <Field label="To (UTC day)">
          <input type="date" name="to" value={draft.to} onChange={set("to")} />
        </Field>
        <button type="submit">Apply filters</button>
      </form>
      <ErrorNote error={page.error} />
      <Table
        id="calls"
        columns={["When", "Model", "Status", num("Tokens in / out"), num("Cost"), num("Latency ms"), "Trace"]}
        rows={page.data?.data}
        empty="No calls match."
        row={(c) => {
          const link = c.trace_id ? traceLink(traceUrl, c.trace_id) : null;
          return (
            <tr key={c.id} data-call-id={c.id}>
              <td>{when(c.occurred_at)}</td>
              <td>
                {c.model}
                {c.alias ? ` (${c.alias})` : ""}
                {c.stream ? " · stream" : ""}
                {c.cache ? ` · cache ${c.cache}` : ""}
              </td>
              <td>
                {c.status}
                {c.error_type ? ` (${c.error_type})` : ""}
              </td>
              <td class="num">
                {orDash(c.prompt_tokens)} / {orDash(c.completion_tokens)}
              </td>
              <td class="num">{usd(c.cost_usd)}</td>
              <td class="num">{c.latency_ms === null ? "—" : Math.round(c.latency_ms)}</td>
              <td>
                {!c.trace_id ? (
                  "—"
                ) : link ? (
                  <a href={link} target="_blank" rel="noopener noreferrer" class="trace">
                    {c.trace_id}
                  </a>
                ) : (
                  <code class="trace">{c.trace_id}</code>
                )}
              </td>
            </tr>
          );
        }}
      />
      <Pager pages={pages} next={page.data?.next_cursor} what="calls" />
    </section>
  );
}
