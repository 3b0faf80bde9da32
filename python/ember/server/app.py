"""The OpenAI-compatible HTTP application over an AsyncEngine (FastAPI on Starlette)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ember._core import EmberError, InvalidRequestError
from ember.data_parallel.pool import NoReplicaError
from ember.data_parallel.router import ReplicaRouter
from ember.lora import LoRARequest
from ember.outputs import RequestOutput
from ember.server.engine_client import EngineClient
from ember.server.errors import ApiError, error_body, error_response
from ember.server.generation import TrackedStream, merge, resolve_max_tokens, unless_disconnected
from ember.server.limits import BodyLimitMiddleware
from ember.server.lora_modules import LoadLoraAdapterRequest, LoraModules, UnloadLoraAdapterRequest
from ember.server.metrics import ServerMetrics
from ember.server.middleware import ApiMiddleware
from ember.server.protocol import ChatCompletionRequest, CompletionKind, CompletionRequest, SamplingFields
from ember.server.request_limits import RequestLimits
from ember.server.responses import ResponseBuilder, sse
from ember.server.structured import Constraint, constraint_error
from ember.server.tools import ToolPlan, plan_tools, template_messages


@dataclass
class ServerConfig:
    """How the server presents the engine: its model name, the API key and the queue limit."""

    model_name: str
    """The name clients pass as `model` (and `/v1/models` lists)."""
    api_key: str | None = None
    """When set, every path but /health (and /metrics, unless `metrics_need_key`) requires
    `Authorization: Bearer <api_key>`."""
    max_pending_requests: int = 1024
    """Sequences in flight (prompts times n) beyond this are refused with 503."""
    metrics_need_key: bool = False
    """Whether /metrics also requires the API key."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    """Body size and header / body time limits."""
    enable_lora: bool = False
    """Whether requests may pick LoRA adapters (the engine was made with enable_lora=True)."""
    lora_modules: dict[str, str] = field(default_factory=dict)
    """Adapters served from the start: model name -> PEFT folder."""


@dataclass
class _Job:
    """One accepted request: its prompts' token ids, texts for echo, and the sampling fields."""

    kind: CompletionKind
    body: SamplingFields
    prompts: list[list[int]]
    echo_texts: list[str] | None
    max_tokens: int | None
    logprobs: int | None
    constraint: Constraint | None = None
    tools: ToolPlan | None = None


class OpenAiServer:
    """The handlers, sharing one engine, one config and one set of metrics."""

    def __init__(self, engine: EngineClient, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.metrics = ServerMetrics()
        self.loras = LoraModules(config.enable_lora, config.model_name, config.lora_modules)

    def models(self) -> dict[str, Any]:
        """GET /v1/models."""
        card = {
            "id": self.config.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "ember",
            "max_model_len": self.engine.max_model_len,
        }
        return {"object": "list", "data": [card, *self.loras.cards(card)]}

    def chat_job(self, body: ChatCompletionRequest) -> _Job:
        """Renders the conversation with the model's chat template and encodes it."""
        messages = [{**(m.model_extra or {}), "role": m.role, "content": m.text()} for m in body.messages]
        plan = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        constraint = body.constraint()
        if plan.constraint is not None:
            if constraint is not None:
                message = (
                    f"tool_choice {plan.mode!r} constrains the output; it cannot be combined with {constraint.param}"
                )
                raise ApiError(400, message, "tool_choice")
            constraint = plan.constraint
        tokenizer = self.engine.tokenizer
        renders_tools = tokenizer.chat_template_renders_tools
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if renders_tools else []
        text = tokenizer.apply_chat_template(
            template_messages(messages, plan, renders_tools),
            add_generation_prompt=body.add_generation_prompt,
            tools=tools or None,
        )
        ids = tokenizer.encode(text, add_special_tokens=False)
        max_tokens, logprobs = body.requested_max_tokens(), body.requested_logprobs()
        return _Job("chat", body, [ids], None, max_tokens, logprobs, constraint, plan)

    def completion_job(self, body: CompletionRequest) -> _Job:
        """Encodes the prompt(s): text with the model's BOS, or token ids as given."""
        if body.suffix is not None:
            raise ApiError(400, "suffix is not supported", "suffix")
        prompts: list[Any] = [body.prompt] if isinstance(body.prompt, str) or _is_ids(body.prompt) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be empty", "prompt")
        tokenizer = self.engine.tokenizer
        ids = [tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p) for p in prompts]
        if any(len(p) == 0 for p in ids):
            raise ApiError(400, "prompt must not be empty", "prompt")
        echo = [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts] if body.echo else None
        return _Job("completion", body, ids, echo, body.max_tokens, body.logprobs, body.constraint())

    async def answer(self, request: Request, make_job: Callable[[], _Job]) -> Response:
        """Builds the job (templating and tokenization, on a worker thread) and runs it; from the moment the
        request is accepted until the response starts, a client that hangs up cancels everything (499)."""

        async def accept() -> Response:
            return await self.run(await asyncio.to_thread(make_job))

        return await unless_disconnected(request, accept)

    async def run(self, job: _Job) -> Response:
        """Checks the model and capacity, starts the engine requests, and answers streamed or whole."""
        body = job.body
        lora = self.loras.resolve(body.model)
        streams = self._streams(job, lora)
        self._check_capacity(len(streams) * body.n)
        builder = ResponseBuilder(job.kind, self.config.model_name, job.logprobs or 0, job.tools)
        firsts: list[RequestOutput] = []
        try:
            firsts = [await s.first() for s in streams]
        except BaseException as exc:
            for s in streams:
                s.abort()
            if isinstance(exc, InvalidRequestError) and job.constraint and exc.param == "structured_outputs":
                # A grammar that does not compile: name the body field it came from.
                raise constraint_error(job.constraint.param, exc) from None
            raise
        if body.stream:
            return StreamingResponse(self._events(job, builder, streams, firsts), media_type="text/event-stream")
        outputs = await _collect(streams, firsts)
        return JSONResponse(builder.full(outputs, job.echo_texts))

    def _check_capacity(self, num_sequences: int) -> None:
        """400 for a request larger than the server's whole queue; 503 when it does not fit now."""
        limit = self.config.max_pending_requests
        if num_sequences > limit:
            raise ApiError(
                400,
                f"The request asks for {num_sequences} sequences (prompts times n), more than this server runs at "
                f"once ({limit}). Send fewer prompts or a smaller n.",
                "n",
            )
        in_flight = self.engine.num_unfinished_sequences
        if in_flight + num_sequences > limit:
            raise ApiError(
                503,
                f"The server is overloaded: {in_flight} sequences in flight (limit {limit}). Retry later.",
            )

    def _streams(self, job: _Job, lora: LoRARequest | None) -> list[TrackedStream]:
        """One engine request per prompt (not started until first iterated)."""
        streams = []
        prompt_param = "messages" if job.kind == "chat" else "prompt"
        for ids in job.prompts:
            max_tokens = resolve_max_tokens(len(ids), job.max_tokens, self.engine.max_model_len, prompt_param)
            params = job.body.sampling_params(max_tokens, job.logprobs, job.constraint)
            delta = job.body.stream
            body = job.body
            stream = TrackedStream(self.engine, self.metrics, ids, params, body.priority, delta, lora, body.cache_salt)
            streams.append(stream)
        return streams

    async def _events(
        self, job: _Job, builder: ResponseBuilder, streams: list[TrackedStream], firsts: list[RequestOutput]
    ) -> AsyncIterator[str]:
        """The SSE body: role chunks (chat), delta chunks, an optional usage chunk, then [DONE]."""
        n = job.body.n
        try:
            if job.kind == "chat":
                yield builder.role_chunk(n)
            # Each choice's first chunk carries its prompt when echo is on.
            echo_pending = {i * n + c: text for i, text in enumerate(job.echo_texts or []) for c in range(n)}
            async for i, delta in merge(streams, firsts):
                if delta.outputs and builder.tools is not None:
                    chunk = builder.tool_delta_chunk(delta, i * n)
                    if chunk is not None:
                        yield chunk
                elif delta.outputs:
                    indices = [i * n + c.index for c in delta.outputs]
                    prefixes = {index: echo_pending.pop(index) for index in indices if index in echo_pending}
                    yield builder.delta_chunk(delta, i * n, prefixes)
            if job.body.include_usage:
                prompt_tokens = sum(s.num_prompt_tokens for s in streams)
                cached_tokens = sum(s.num_cached_tokens for s in streams)
                yield builder.usage_chunk(prompt_tokens, sum(s.num_generated for s in streams), cached_tokens)
        except EmberError as exc:
            # The engine failed this request after the response started: say so in the stream itself.
            yield sse(error_body(500, str(exc)))
        finally:
            for s in streams:
                s.abort()
        yield sse("[DONE]")


def _is_ids(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(t, int) for t in value)


async def _collect(streams: list[TrackedStream], firsts: list[RequestOutput]) -> list[RequestOutput]:
    """The final cumulative output of every stream."""
    finals = list(firsts)
    async for i, out in merge(streams, firsts):
        finals[i] = out
    return finals


def build_app(engine: EngineClient, config: ServerConfig) -> FastAPI:
    """The FastAPI application over an AsyncEngine or a ReplicaRouter; the engine is shut down when the
    application stops."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.shutdown()

    server = OpenAiServer(engine, config)
    app = FastAPI(title="Ember", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    # The last added runs first: the key is checked before the body is read.
    app.add_middleware(BodyLimitMiddleware, limits=config.limits)
    app.add_middleware(
        ApiMiddleware, api_key=config.api_key, metrics=server.metrics, metrics_need_key=config.metrics_need_key
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        return error_response(400, str(exc), _api_param(request.url.path, getattr(exc, "param", None)))

    # InvalidRequestError is both an EmberError and a ValueError: register it by name so it wins.
    app.add_exception_handler(InvalidRequestError, invalid_request)
    app.add_exception_handler(ValueError, invalid_request)

    @app.exception_handler(EmberError)
    async def engine_error(_: Request, exc: EmberError) -> JSONResponse:
        return error_response(500, str(exc))

    @app.exception_handler(NoReplicaError)
    async def no_replica(_: Request, exc: NoReplicaError) -> JSONResponse:
        return error_response(503, str(exc))

    @app.get("/health")
    async def health() -> Response:
        if isinstance(engine, ReplicaRouter):
            status, body = engine.health()
            return JSONResponse(body, status_code=status)
        return Response(status_code=200 if engine.alive else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        if isinstance(engine, ReplicaRouter):
            text = server.metrics.render(engine.stats(), engine.replica_stats(), engine.metric_lines())
        else:
            text = server.metrics.render(engine.stats())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> PlainTextResponse:
        server.loras.add(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> PlainTextResponse:
        lora = server.loras.remove(body.lora_name)
        unload = getattr(engine, "unload_lora", None)
        if unload is not None:
            # Still in use: its requests finish, then the engine's LRU drops it.
            with contextlib.suppress(InvalidRequestError):
                await unload(lora.lora_int_id)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await server.answer(request, lambda: server.chat_job(body))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await server.answer(request, lambda: server.completion_job(body))

    return app


_ENGINE_TO_API_PARAM = {
    "/v1/chat/completions": {"prompt_token_ids": "messages", "logprobs": "top_logprobs"},
    "/v1/completions": {"prompt_token_ids": "prompt"},
}
"""Engine parameter names that the OpenAI bodies call differently, per endpoint."""


def _api_param(path: str, engine_param: str | None) -> str | None:
    """The body field an engine error's parameter came from."""
    if engine_param is None:
        return None
    return _ENGINE_TO_API_PARAM.get(path, {}).get(engine_param, engine_param)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """400 for a body pydantic refused: each problem with its field path; `param` is the top-level field of the
    first (None for malformed JSON, which has no field)."""
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        position = next((p for p in errors[0]["loc"] if isinstance(p, int)), None)
        where = f" at byte {position}" if position is not None else ""
        return error_response(400, f"The body is not valid JSON{where}: {errors[0]['msg']}")
    fields = [".".join(str(p) for p in e["loc"] if p != "body") for e in errors]
    problems = [f"{name or 'body'}: {e['msg']}" for name, e in zip(fields, errors, strict=True)]
    param = fields[0].split(".")[0] if fields else ""
    return error_response(400, "; ".join(problems), param or None)
