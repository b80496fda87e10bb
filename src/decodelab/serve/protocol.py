"""The request and response bodies of the OpenAI-compatible API, as pydantic models.

Field names follow OpenAI's `/v1/completions` and `/v1/chat/completions`; decodelab's extras sit at
the top level of the body the way vLLM accepts them (`method`, `method_params`, `top_k`, `min_p`,
`repetition_penalty`, `structured_outputs`, `token_healing`, …). Every request model forbids unknown fields, so a
misspelt or unsupported parameter is an HTTP 400 naming it, never silently ignored (vLLM answers
HTTP 200 with unconstrained output for its removed `guided_*` fields). The same models generate
`/openapi.json`, so the schema is exactly what the server accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Sampling parameters a request may set at the top level: name → decodelab's name (README.md, "Python API").
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
                   "repetition_penalty", "presence_penalty", "frequency_penalty", "no_repeat_ngram_size")

StopStrings = Annotated[str, Field(min_length=1)]
ParamValue = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaFormat(Strict):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# a `structured_outputs` key (by its JSON name) → the decodelab constraint kind it asks for (docs/CONSTRAINTS.md)
CONSTRAINT_KIND = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "lark"}


class StructuredOutputs(Strict):
    """vLLM's `structured_outputs`: exactly one of the four keys (CONSTRAINT_KIND)."""

    json_: dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class SamplingRequest(Strict):
    """Fields shared by both generation endpoints."""

    model: str | None = Field(default=None, description="the served model's id (GET /v1/models); optional")
    max_tokens: int | None = Field(default=None, ge=1, description="new tokens at most (default 16)")
    n: int = Field(default=1, ge=1, le=16, description="choices per prompt; choice i uses seed + i")
    stop: StopStrings | list[StopStrings] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**62)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    temperature: float | None = Field(default=None, ge=0, description="0 = greedy for every method")
    top_p: float | None = Field(default=None, gt=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    # decodelab's extras (the OpenAI client sends them with extra_body={...})
    method: str | None = Field(default=None, description="a decoding method from decodelab.methods(); default: "
                               "greedy, or sample when temperature > 0 (as an OpenAI client expects)")
    method_params: dict[str, ParamValue] = Field(default_factory=dict,
                                                 description="the method's own parameters")
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    typical_p: float | None = Field(default=None, gt=0, le=1)
    epsilon_cutoff: float | None = Field(default=None, ge=0, lt=1)
    eta_cutoff: float | None = Field(default=None, ge=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0)
    structured_outputs: StructuredOutputs | None = None
    token_healing: bool = Field(default=False, description="back each prompt up by its last token and make the "
                                "first generated token re-cover its text (docs/CONSTRAINTS.md); the text "
                                "returned leaves the re-covered part out")

    @field_validator("stop")
    @classmethod
    def _as_list(cls, value):
        return [value] if isinstance(value, str) else value

    def sampling_params(self) -> dict[str, Any]:
        """The sampling parameters the request set (unset ones keep the method's defaults)."""
        return {k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k) is not None}


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="a prompt, or a list of prompts (text or token ids)")
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


# ---- responses ----

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None  # {tokens, token_logprobs, top_logprobs, text_offset} when asked
    finish_reason: str | None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: dict[str, Any] | None = None  # {content: [{token, logprob, bytes, top_logprobs}]} when asked
    finish_reason: str | None


class DecodelabChoice(BaseModel):
    index: int
    token_ids: list[int]
    finish_reason: str  # decodelab's: eos, stop or length
    stats: dict[str, Any]  # decodelab.Stats.to_dict() plus drafted_tokens / accepted_tokens


class DecodelabInfo(BaseModel):
    """Per-request results beyond OpenAI's: the method, timings, each choice's token ids and Stats."""

    method: str
    queue_time_s: float
    time_to_first_token_s: float | None
    e2e_s: float
    choices: list[DecodelabChoice]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    decodelab: DecodelabInfo


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    decodelab: DecodelabInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "decodelab"
    max_model_len: int
    methods: dict[str, dict[str, Any]]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
