"""The inference service: LLM providers behind one OpenAI-compatible API."""
