// The chat playground: a model from /v1/models (or any name or alias typed), the answer
// streamed (fetch + ReadableStream, server-sent events) into the page as it arrives.
// Tokens come from the stream's usage chunk (stream_options.include_usage), latency (first
// token and total) is measured here, and the cost is the call log's record of this call
// (telemetry records it asynchronously, so it appears a moment after the answer).
import { useRef, useState } from "preact/hooks";
import { api, call, type Page } from "../api";
import { ErrorNote, Field, messageOf, useLoad, useSession } from "../ui";

interface Message {
  role: "user" | "assistant" | "system";
  content: string;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

interface CallRow {
  id: string;
  occurred_at: string;
  model: string;
  alias: string | null;
  cost_usd: string | null;
  latency_ms: number | null;
  trace_id: string | null;
}

interface Stats {
  model: string;
  usage: Usage | null;
  firstTokenMs: number | null;
  totalMs: number;
  cost: string | null;
  serverLatencyMs: number | null;
  traceId: string | null;
}

/** The JSON payloads of the complete `data:` events in `buffer`, and what is left over. */
export function sseEvents(buffer: string): { events: string[]; rest: string } {
  const events: string[] = [];
  const blocks = buffer.replace(/\r\n/g, "\n").split("\n\n");
  const rest = blocks.pop() ?? "";
  for (const block of blocks) {
    const data = block
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trimStart())
      .join("\n");
    if (data) events.push(data);
  }
  return { events, rest };
}

// Calls already shown as some answer's (so a second answer does not take the first's).
const seenCalls = new Set<string>();

/** Sign-out forgets everything in memory. */
export function forgetCalls(): void {
  seenCalls.clear();
}

export function Playground() {
  const { can, traceUrl } = useSession();
  const models = useLoad(() => api<{ data: { id: string }[] }>("GET", "/v1/models"), []);
  const [model, setModel] = useState("");
  const [system, setSystem] = useState("");
  const [prompt, setPrompt] = useState("");
  const [history, setHistory] = useState<Message[]>([]);
  const [answer, setAnswer] = useState("");
  const [streaming, setStreaming] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [stats, setStats] = useState<Stats | null>(null);
  const abort = useRef<AbortController | null>(null);
  const invoke = can("inference:invoke");

  const send = async (event: Event) => {
    event.preventDefault();
    if (!prompt.trim() || !model.trim()) return;
    const turn: Message[] = [...history, { role: "user", content: prompt }];
    const messages: Message[] = system.trim() ? [{ role: "system", content: system }, ...turn] : turn;
    setHistory(turn);
    setPrompt("");
    setAnswer("");
    setError(null);
    setStats(null);
    setStreaming(true);
    const controller = new AbortController();
    abort.current = controller;
    const started = performance.now();
    const startedAt = Date.now();
    let text = "";
    let usage: Usage | null = null;
    let firstToken: number | null = null;
    let answeredBy = model;
    try {
      const response = await call(
        "POST",
        "/v1/chat/completions",
        { model, messages, stream: true, stream_options: { include_usage: true } },
        { signal: controller.signal },
      );
      if (!response.body) throw new Error("The answer has no body to stream.");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const parsed = sseEvents(buffer + value);
        buffer = parsed.rest;
        for (const data of parsed.events) {
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data) as {
            model?: string;
            choices?: { delta?: { content?: string | null } }[];
            usage?: Usage | null;
            error?: { message?: string };
          };
          if (chunk.error) throw new Error(chunk.error.message ?? "The stream failed.");
          if (chunk.model) answeredBy = chunk.model;
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (firstToken === null) firstToken = performance.now() - started;
            text += delta;
          }
        }
        setAnswer(text);
      }
      const result: Stats = {
        model: answeredBy,
        usage,
        firstTokenMs: firstToken,
        totalMs: performance.now() - started,
        cost: null,
        serverLatencyMs: null,
        traceId: null,
      };
      setStats(result);
      setHistory([...turn, { role: "assistant", content: text }]);
      void findCall(result, model, startedAt).then((found) => found && setStats({ ...found }));
    } catch (reason) {
      if (reason instanceof DOMException && reason.name === "AbortError") setError("Stopped.");
      else setError(messageOf(reason));
    } finally {
      setStreaming(false);
      abort.current = null;
    }
  };

  const list = models.data?.data ?? [];
  return (
    <section>
      <h1>Playground</h1>
      {!invoke && <p class="notice">Your role cannot call models: the playground is read-only for you.</p>}
      <form onSubmit={send} class="card">
        <div class="grid">
          <Field label="Model" hint={list.length ? "Pick one, or type any provider/model or alias." : "Type a provider/model or an alias."}>
            <input name="model" list="models" required value={model} onInput={(e) => setModel(e.currentTarget.value)} placeholder="openai/gpt-4o-mini" />
          </Field>
          <datalist id="models">
            {list.map((m) => (
              <option key={m.id} value={m.id} />
            ))}
          </datalist>
          <Field label="System prompt (optional)">
            <input name="system" value={system} onInput={(e) => setSystem(e.currentTarget.value)} />
          </Field>
        </div>
        <ErrorNote error={models.error} />
        {history.length > 0 && (
          <ol class="transcript" aria-label="Conversation">
            {history.map((m, index) => (
              <li key={index} class={m.role}>
                <strong>{m.role === "user" ? "You" : "Model"}:</strong> {m.content}
              </li>
            ))}
          </ol>
        )}
        <Field label="Message">
          <textarea name="prompt" rows={3} value={prompt} onInput={(e) => setPrompt(e.currentTarget.value)} />
        </Field>
        {invoke && (
          <div class="actions">
            <button type="submit" class="primary" disabled={streaming}>
              Send
            </button>
            {streaming && (
              <button type="button" onClick={() => abort.current?.abort()}>
                Stop
              </button>
            )}
            {history.length > 0 && !streaming && (
              <button
                type="button"
                onClick={() => {
                  setHistory([]);
                  setAnswer("");
                  setStats(null);
                }}
              >
                New conversation
              </button>
            )}
          </div>
        )}
      </form>
      <h2>Answer</h2>
      <div id="answer" class="answer" aria-live="polite" aria-busy={streaming}>
        {answer}
      </div>
      <ErrorNote error={error} />
      {stats && (
        <dl id="stats" class="stats">
          <dt>Model</dt>
          <dd>{stats.model}</dd>
          <dt>Tokens</dt>
          <dd data-prompt-tokens={stats.usage?.prompt_tokens} data-completion-tokens={stats.usage?.completion_tokens}>
            {stats.usage ? `${stats.usage.prompt_tokens} in, ${stats.usage.completion_tokens} out` : "not reported"}
          </dd>
          <dt>Latency</dt>
          <dd>
            {stats.firstTokenMs !== null ? `first token ${Math.round(stats.firstTokenMs)} ms, ` : ""}
            total {Math.round(stats.totalMs)} ms
            {stats.serverLatencyMs !== null ? ` (platform: ${Math.round(stats.serverLatencyMs)} ms)` : ""}
          </dd>
          <dt>Cost</dt>
          <dd id="cost">{stats.cost === null ? "waiting for the call log…" : /^[0-9]/.test(stats.cost) ? `$${stats.cost}` : stats.cost}</dd>
          {stats.traceId && (
            <>
              <dt>Trace</dt>
              <dd>{traceUrl ? <a href={traceUrl.replace("{trace_id}", stats.traceId)}>{stats.traceId}</a> : <code>{stats.traceId}</code>}</dd>
            </>
          )}
        </dl>
      )}
    </section>
  );
}

/** This answer's record in the call log (the newest call of the model not matched yet,
 * made since the request started), asked a few times: telemetry ingests asynchronously. */
async function findCall(stats: Stats, requested: string, startedAt: number): Promise<Stats | null> {
  for (let attempt = 0; attempt < 10; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 300 + attempt * 200));
    let page: Page<CallRow>;
    try {
      page = await api<Page<CallRow>>("GET", "/v1/calls?limit=20");
    } catch {
      return null;
    }
    const found = page.data.find(
      (c) =>
        !seenCalls.has(c.id) &&
        (c.model === stats.model || c.alias === requested || c.model === requested) &&
        Date.parse(c.occurred_at) >= startedAt - 60_000,
    );
    if (found) {
      seenCalls.add(found.id);
      return { ...stats, cost: found.cost_usd ?? "0 (no price for this model)", serverLatencyMs: found.latency_ms, traceId: found.trace_id };
    }
  }
  return { ...stats, cost: "not recorded yet (see the call log)" };
}
