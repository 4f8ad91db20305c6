// Usage: cost and calls by UTC day as SVG bar charts (each bar carries its exact figure in
// data-value and a <title>, so a reader or a test gets the numbers from the DOM), and a
// table grouped by model, provider, key, team or user (user only for roles that may read
// everyone's usage; the API's refusal is shown as its detail otherwise).
import { useState } from "preact/hooks";
import { api, query, type Page } from "../api";
import { dayBounds, daysAgo, ErrorNote, Field, isoDay, num, Table, useLoad, useSession, usd } from "../ui";

interface Group {
  key: string | null;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost_usd: string;
  latency_ms_p50: number | null;
  latency_ms_p95: number | null;
}

interface Usage {
  group_by: string;
  from: string;
  to: string;
  groups: Group[];
  totals: Omit<Group, "key" | "latency_ms_p50" | "latency_ms_p95">;
}

const MAX_DAYS = 366;

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** Every UTC day from `from` to `to`, inclusive (at most MAX_DAYS). */
function daysOf(from: string, to: string): string[] {
  const days: string[] = [];
  const day = new Date(`${from}T00:00:00Z`);
  const end = new Date(`${to}T00:00:00Z`);
  while (day <= end && days.length < MAX_DAYS) {
    days.push(isoDay(day));
    day.setUTCDate(day.getUTCDate() + 1);
  }
  return days;
}

export function UsagePage() {
  const { can } = useSession();
  const [from, setFrom] = useState(daysAgo(6));
  const [to, setTo] = useState(daysAgo(0));
  const [groupBy, setGroupBy] = useState("model");
  // A team's usage: all of it for its owners (and admins), your own in it otherwise.
  const [team, setTeam] = useState("");
  const teams = useLoad(() => api<Page<{ id: string; name: string; role: string | null }>>("GET", "/auth/teams?limit=200"), []);
  const span = (Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / 86_400_000 + 1;
  const invalid = !(span >= 1) ? "Pick a start on or before the end." : span > MAX_DAYS ? `Pick at most ${MAX_DAYS} days.` : null;
  const bounds = invalid ? null : dayBounds(from, to);
  const byDay = useLoad(
    () => (bounds ? api<Usage>("GET", `/v1/usage${query({ group_by: "day", percentiles: "false", team, ...bounds })}`) : Promise.resolve(undefined)),
    [from, to, team],
  );
  const table = useLoad(
    () => (bounds ? api<Usage>("GET", `/v1/usage${query({ group_by: groupBy, team, ...bounds })}`) : Promise.resolve(undefined)),
    [from, to, groupBy, team],
  );
  const keys = useLoad(() => (groupBy === "key" ? api<{ id: string; name: string }[]>("GET", "/auth/api-keys") : Promise.resolve([])), [groupBy]);
  const keyNames = new Map((keys.data ?? []).map((k) => [k.id, k.name]));
  const days = invalid ? [] : daysOf(from, to);
  const perDay = new Map((byDay.data?.groups ?? []).map((g) => [g.key ?? "", g]));
  const ownsTeam = (teams.data?.data ?? []).some((t) => t.id === team && t.role === "owner");
  const choices = ["model", "provider", "key", "team", ...(can("telemetry:read_all") || ownsTeam ? ["user"] : []), "day"];
  return (
    <section>
      <h1>Usage</h1>
      <form class="row" onSubmit={(e) => e.preventDefault()} aria-label="Date range">
        <Field label="From (UTC day)">
          <input type="date" name="from" value={from} max={to} onChange={(e) => setFrom(e.currentTarget.value)} />
        </Field>
        <Field label="To (UTC day)">
          <input type="date" name="to" value={to} min={from} onChange={(e) => setTo(e.currentTarget.value)} />
        </Field>
        {(teams.data?.data.length ?? 0) > 0 && (
          <Field label="Team">
            <select
              name="team"
              value={team}
              onChange={(e) => {
                const chosen = e.currentTarget.value;
                const owned = (teams.data?.data ?? []).some((t) => t.id === chosen && t.role === "owner");
                if (groupBy === "user" && !owned && !can("telemetry:read_all")) setGroupBy("model");
                setTeam(chosen);
              }}
            >
              <option value="">any (no team filter)</option>
              {teams.data?.data.map((t) => (
                <option key={t.id} value={t.id}>
                  {t.name}
                </option>
              ))}
            </select>
          </Field>
        )}
      </form>
      <ErrorNote error={invalid ?? byDay.error} />
      {byDay.data && (
        <>
          <p class="totals" id="usage-totals" data-requests={byDay.data.totals.requests} data-cost={byDay.data.totals.cost_usd}>
            {plural(byDay.data.totals.requests, "call")}, {usd(byDay.data.totals.cost_usd)},{" "}
            {plural(byDay.data.totals.prompt_tokens + byDay.data.totals.completion_tokens, "token")}, {plural(byDay.data.totals.errors, "error")}
          </p>
          <div class="charts">
            <BarChart id="chart-cost" title="Cost by day (USD)" days={days} value={(day) => perDay.get(day)?.cost_usd ?? "0"} format={(v) => `$${v}`} />
            <BarChart id="chart-calls" title="Calls by day" days={days} value={(day) => String(perDay.get(day)?.requests ?? 0)} format={(v) => plural(Number(v), "call")} />
          </div>
        </>
      )}
      <h2>Breakdown</h2>
      <div class="row">
        <Field label="Group by">
          <select name="group-by" value={groupBy} onChange={(e) => setGroupBy(e.currentTarget.value)}>
            {choices.map((c) => (
              <option key={c} value={c}>
                {c}
              </option>
            ))}
          </select>
        </Field>
      </div>
      <ErrorNote error={table.error} />
      <Table
        id="usage-table"
        columns={[groupBy, num("Calls"), num("Errors"), num("Prompt tokens"), num("Completion tokens"), num("Cost"), num("p50 ms"), num("p95 ms")]}
        rows={table.data?.groups}
        empty="No calls in this range."
        row={(g) => (
          <tr key={g.key ?? "none"}>
            <td>{g.key === null ? "(none)" : groupBy === "key" ? keyNames.get(g.key) ?? g.key : g.key}</td>
            <td class="num">{g.requests}</td>
            <td class="num">{g.errors}</td>
            <td class="num">{g.prompt_tokens}</td>
            <td class="num">{g.completion_tokens}</td>
            <td class="num">{usd(g.cost_usd)}</td>
            <td class="num">{g.latency_ms_p50 === null ? "—" : Math.round(g.latency_ms_p50)}</td>
            <td class="num">{g.latency_ms_p95 === null ? "—" : Math.round(g.latency_ms_p95)}</td>
          </tr>
        )}
      />
    </section>
  );
}

const WIDTH = 600;
const HEIGHT = 180;
const AXIS = 20;

/** Hand-drawn bars, one per day: height from the value, the exact value in data-value. */
function BarChart({ id, title, days, value, format }: { id: string; title: string; days: string[]; value: (day: string) => string; format: (value: string) => string }) {
  const values = days.map(value);
  const max = Math.max(0, ...values.map(Number));
  const slot = days.length ? WIDTH / days.length : WIDTH;
  const bar = Math.max(1, slot * 0.7);
  const titleId = `${id}-title`;
  return (
    <figure class="chart">
      <figcaption id={titleId}>
        {title}
        <span class="max"> (highest: {format(max === 0 ? "0" : values[values.map(Number).indexOf(max)])})</span>
      </figcaption>
      <svg id={id} viewBox={`0 0 ${WIDTH} ${HEIGHT + AXIS}`} role="img" aria-labelledby={titleId}>
        <line x1={0} y1={HEIGHT} x2={WIDTH} y2={HEIGHT} class="axis" />
        {days.map((day, index) => {
          const v = values[index];
          const h = max > 0 ? (Number(v) / max) * (HEIGHT - 4) : 0;
          return (
            <rect key={day} class="bar" data-day={day} data-value={v} x={index * slot + (slot - bar) / 2} y={HEIGHT - h} width={bar} height={h || 0.5}>
              <title>{`${day}: ${format(v)}`}</title>
            </rect>
          );
        })}
        {days.length > 0 && days.length <= 14
          ? days.map((day, index) => (
              <text key={day} x={index * slot + slot / 2} y={HEIGHT + 15} class="tick mid">
                {day.slice(5)}
              </text>
            ))
          : days.length > 0 && (
              <>
                <text x={0} y={HEIGHT + 15} class="tick">
                  {days[0]}
                </text>
                <text x={WIDTH} y={HEIGHT + 15} class="tick end">
                  {days[days.length - 1]}
                </text>
              </>
            )}
      </svg>
    </figure>
  );
}
