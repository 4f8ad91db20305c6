"""OpenAI's chat completion request, checked before any provider is called: roles, content
parts, tool calls and their answers, `n` and the sampling ranges, as OpenAI documents them
(https://platform.openai.com/docs/api-reference/chat/create).

Only what is checked is declared. Every object accepts fields it does not know, and the
request is forwarded as the client sent it (api.py), so a provider that takes more (vLLM's
`top_k`, a new OpenAI field) still gets it. A violation is a 400 problem+json whose `errors`
name the field (`loc`), as OpenAI answers 400 `invalid_request_error`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from inference.schemas import ModelName

# Bounds of our own where OpenAI documents none: a request is at most the gateway's body
# limit anyway; these keep one request's validation cheap.
MAX_MESSAGES = 10_000
MAX_PARTS = 1_000
MAX_TOOLS = 128  # OpenAI's own limit
MAX_STOP = 4  # OpenAI's own limit
MAX_N = 128  # OpenAI's own limit


class _Open(BaseModel):
    """An object of OpenAI's schema: the fields checked, and any others kept."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageUrl(_Open):
    url: Annotated[str, StringConstraints(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(_Open):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(_Open):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Open):
    type: Literal["file"]
    file: FileData


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
TextContent = str | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_PARTS)]
UserContent = str | Annotated[list[UserPart], Field(min_length=1, max_length=MAX_PARTS)]
AssistantContent = str | Annotated[list[AssistantPart], Field(min_length=1, max_length=MAX_PARTS)]


class FunctionCall(_Open):
    name: str
    arguments: str  # JSON, as the model wrote it


class ToolCall(_Open):
    id: Annotated[str, StringConstraints(min_length=1)]
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system"]
    content: TextContent
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: UserContent
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: AssistantContent | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.function_call is None:
            raise ValueError("an assistant message needs content, tool_calls or function_call")
        return self


class ToolMessage(_Open):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: Annotated[str, StringConstraints(min_length=1)]


class FunctionMessage(_Open):  # deprecated by OpenAI, still accepted
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]  # fmt: skip

ToolName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(_Open):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    name: ToolName


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Open):
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self


class StreamOptions(_Open):
    include_usage: bool | None = None


Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=1)]


class CacheOption(BaseModel):
    """`"cache": {"mode": "exact" | "semantic" | "off", "ttl": seconds}`."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["exact", "semantic", "off"]
    ttl: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None


class ChatRequest(_Open):
    """OpenAI's chat completion request; fields we do not know are passed through."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [
            {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
            {"model": "openai/gpt-4o-mini", "stream": True,
             "messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"}]},
        ]},
    )  # fmt: skip

    model: ModelName
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    # The response cache, for this request (inference/cache.py); never sent to a provider.
    cache: CacheOption | None = None

    @model_validator(mode="after")
    def _tool_calls_are_answered(self) -> ChatRequest:
        """Each `tool` message answers a call of the assistant message just before it (only
        tool messages between), and every call of such a message is answered before the
        conversation goes on: OpenAI refuses the request otherwise."""
        pending: dict[str, int] = {}  # call id -> the assistant message's index
        for i, message in enumerate(self.messages):
            if isinstance(message, ToolMessage):
                if message.tool_call_id not in pending:
                    raise ValueError(
                        f"messages[{i}].tool_call_id: {message.tool_call_id!r} answers no tool "
                        "call of the assistant message before it"
                    )
                del pending[message.tool_call_id]
                continue
            if pending:
                raise ValueError(_unanswered(pending))
            if isinstance(message, AssistantMessage) and message.tool_calls:
                pending = {call.id: i for call in message.tool_calls}
                if len(pending) != len(message.tool_calls):
                    raise ValueError(f"messages[{i}].tool_calls: two calls have the same id")
        if pending:
            raise ValueError(_unanswered(pending))
        return self


def _unanswered(pending: dict[str, int]) -> str:
    index = next(iter(pending.values()))
    ids = ", ".join(repr(call_id) for call_id in pending)
    return (
        f"messages[{index}].tool_calls: every tool call needs a tool message answering it "
        f"(tool_call_id) right after; none answers {ids}"
    )
