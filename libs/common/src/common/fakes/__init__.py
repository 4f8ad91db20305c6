"""Protocol-faithful local stand-ins for OpenAI and Hugging Face, for tests and benchmarks.

The real `openai` and `huggingface_hub` clients talk to these over HTTP; a `FaultControl`
scripts failures (errors, Retry-After, slow or cut responses, malformed JSON) and records
what arrived. `python -m common.fakes.run` serves one as a process.
"""

from common.fakes.faults import Fault, FaultControl, RecordedRequest
from common.fakes.hf_server import create_hf_app
from common.fakes.openai_server import create_openai_app

__all__ = ["Fault", "FaultControl", "RecordedRequest", "create_hf_app", "create_openai_app"]
