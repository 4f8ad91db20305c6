"""The telemetry service: the record of every LLM call: tokens, latency, cost; usage queries."""
