"""Protocol-faithful local stand-ins for OpenAI, Anthropic and Hugging Face, for tests and
benchmarks.

The real `openai` and `huggingface_hub` clients (and inference's Anthropic provider) talk
to these over HTTP; a `FaultControl` scripts failures (errors, Retry-After, slow or cut
responses, malformed JSON) and records what arrived. `python -m devkit.fakes.run` serves
one as a process.
"""

from devkit.fakes.anthropic_server import create_anthropic_app
from devkit.fakes.faults import Fault, FaultControl, RecordedRequest
from devkit.fakes.hf_server import create_hf_app
from devkit.fakes.openai_server import create_openai_app

__all__ = [
    "Fault",
    "FaultControl",
    "RecordedRequest",
    "create_anthropic_app",
    "create_hf_app",
    "create_openai_app",
]
