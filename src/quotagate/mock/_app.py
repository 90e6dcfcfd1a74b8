"""A fast OpenAI-compatible mock provider, with faults on demand.

It serves the demo, the tests and the benchmarks. Usage is real: prompt tokens are counted from
the request with the model's tokenizer, completion tokens from the text it generates. Everything
that does not depend on the request (the generated text, its token count, the stream's chunks)
is computed once per length and cached, so a request costs a tokenizer call and a JSON dump.

It also answers Azure OpenAI's URL shape, ``POST /openai/deployments/{deployment}/chat/completions
?api-version=...`` (and completions, embeddings): the deployment named in the URL is the model it
answers as, the key may come in an ``api-key`` header, and errors are Azure's (a 429 says how long
to wait in retry-after-ms as well).

Faults are drawn per request: a share of 429s (with Retry-After), of 500s, of hangs (no answer
until the client gives up), and of streams dropped midway (the connection is cut without the
final chunk); streams can be slowed by a delay between chunks. A "poison" text fails every
request whose body holds it, as a provider that crashes on one input does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import re
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import parse_qs

import orjson

from ..tokens import count_chat_tokens, count_prompt_input, encoding_for_model, get_encoding
from ._anthropic import serve_messages
from ._responses import MockResponses

Scope = dict[str, Any]

# Words that are one token each in o200k_base and cl100k_base (checked by a test), so the text
# of N tokens is simply N words.
WORDS = (
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " lazy",
    " dog",
    " and",
    " then",
    " runs",
    " back",
    " to",
    " its",
    " home",
    " in",
    " a",
    " small",
    " town",
    " near",
    " river",
)
DEFAULT_COMPLETION_TOKENS = 16
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_AZURE_PREFIX = "/openai/deployments/"


class DroppedConnection(Exception):
    """Raised inside the app to make the server cut the connection mid-stream."""


@dataclass
class MockOptions:
    latency_ms: float = 0.0
    completion_tokens: int = DEFAULT_COMPLETION_TOKENS
    stream_chunk_delay_ms: float = 0.0
    rate_429: float = 0.0
    retry_after: float = 1.0
    rate_500: float = 0.0
    rate_hang: float = 0.0
    rate_drop: float = 0.0
    fail_first: int = 0  # the first N completion requests answer 429 (deterministic retries)
    rpm: int | None = None  # enforce a provider limit exactly: 429 past rpm requests in any window
    rate_window: float = 60.0  # seconds of that window (60: a true RPM)
    storm_seconds: float = 0.0  # answer every request 429 for this long after start (a 429 storm)
    api_key: str | None = None
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4.1", "text-embedding-3-small")
    record: bool = False
    seed: int | None = None
    embedding_dimensions: int = 1536
    poison: str | None = None  # a request whose body holds this text is answered 500


@lru_cache(maxsize=256)
def _completion(n_tokens: int) -> tuple[str, tuple[str, ...], int]:
    pieces = tuple(WORDS[i % len(WORDS)] for i in range(n_tokens))
    text = "".join(pieces)
    counted = len(get_encoding("o200k_base").encode_ordinary(text))
    return text, pieces, counted


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


@dataclass
class MockState:
    requests_served: int = 0
    tokens_served: int = 0  # prompt and completion tokens of the completions answered (usage's total)
    rate_limited: int = 0  # 429s sent because the RPM was exceeded (the gateway's fault)
    poisoned: int = 0  # requests failed because their body held options.poison
    started: deque[float] = field(default_factory=deque)  # start times within the last minute
    # When each request arrived (time.monotonic()): what a test measures a gateway's pacing by.
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    recorded: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=200))


class MockUpstream:
    """The ASGI app. ``MockUpstream(MockOptions(...))``; run it with any ASGI server."""

    def __init__(self, options: MockOptions | None = None) -> None:
        self.options = options or MockOptions()
        self.state = MockState()
        self._rng = random.Random(self.options.seed)
        self._created = int(time.time())
        self._born = time.monotonic()
        self._fault_total = (
            self.options.rate_429 + self.options.rate_500 + self.options.rate_hang + self.options.rate_drop
        )
        self._auth = f"Bearer {self.options.api_key}".encode() if self.options.api_key else None
        self._azure_key = self.options.api_key.encode() if self.options.api_key else None
        self._poison = self.options.poison.encode() if self.options.poison else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/v1/messages"):  # Anthropic's Messages API: see _anthropic.py
            await serve_messages(self, scope, receive, send)
            return
        # Azure OpenAI's shape: the deployment (Azure's name for the model) is in the URL.
        deployment: str | None = None
        if path.startswith(_AZURE_PREFIX):
            deployment, _, rest = path[len(_AZURE_PREFIX) :].partition("/")
            path = "/" + rest
        elif path.startswith("/v1/"):
            path = path[3:]
        method = scope["method"]
        # Moderations, images, audio, files, batches: see OtherEndpoints.
        if await self._other_endpoints.serve(scope, receive, send, method, path):
            return
        if method == "GET" and deployment is None:
            if path == "/models":
                await self._json(send, 200, {"object": "list", "data": [self._model(m) for m in self.options.models]})
            elif path == "/health":
                await self._json(
                    send,
                    200,
                    {
                        "status": "ok",
                        "requests_served": self.state.requests_served,
                        "tokens_served": self.state.tokens_served,
                        "rate_limited": self.state.rate_limited,
                    },
                )
            elif path == "/mock/requests":
                await self._json(send, 200, [r.__dict__ for r in self.state.recorded])
            else:
                await self._error(send, 404, "Unknown URL", "invalid_request_error", "unknown_url")
            return
        if method != "POST" or path not in ("/chat/completions", "/completions", "/embeddings"):
            await self._error(
                send, 404, f"Unknown URL {method} {scope['path']}", "invalid_request_error", "unknown_url"
            )
            return
        query = scope.get("query_string", b"").decode("latin-1")
        if deployment is not None and not parse_qs(query).get("api-version"):
            await self._azure_error(
                send,
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
            return

        body_bytes = await self._read(receive)
        if deployment is not None and self._azure_key is not None:
            # Azure takes a key in api-key, or a Microsoft Entra ID token as a bearer token (here:
            # the same secret).
            sent = scope["headers"]
            if (b"api-key", self._azure_key) not in sent and (b"authorization", self._auth) not in sent:
                await self._azure_error(
                    send,
                    401,
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
                    "a valid key for an active subscription and use a correct regional API endpoint for your "
                    "resource.",
                )
                return
        elif self._auth is not None and (b"authorization", self._auth) not in scope["headers"]:
            # Like OpenAI, echo a masked form of the key that was sent: the gateway must not
            # pass even that on to its clients.
            sent = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ")
            masked = f"{sent[:8]}{'*' * max(len(sent) - 12, 0)}{sent[-4:]}" if sent else "(none)"
            await self._error(
                send,
                401,
                f"Incorrect API key provided: {masked}.",
                "invalid_request_error",
                "invalid_api_key",
            )
            return
        try:
            body = orjson.loads(body_bytes)
        except orjson.JSONDecodeError:
            await self._error(
                send, 400, "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
            return
        if not isinstance(body, dict) or (deployment is None and not isinstance(body.get("model"), str)):
            await self._error(send, 400, "you must provide a model parameter", "invalid_request_error", None)
            return
        if self.options.record:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.state.recorded.append(RecordedRequest(scope["path"], headers, body, query))
        if deployment is not None:
            body = {**body, "model": deployment}  # Azure ignores the body's model
        self.state.requests_served += 1
        self.state.arrivals.append(time.monotonic())

        if self.options.rpm is not None:
            now = time.monotonic()
            started = self.state.started
            while started and started[0] <= now - self.options.rate_window:
                started.popleft()
            if len(started) >= self.options.rpm:
                self.state.rate_limited += 1
                wait = max(0.001, started[0] + self.options.rate_window - now)
                await self._error(
                    send,
                    429,
                    f"Rate limit reached for requests per min (RPM): Limit {self.options.rpm}.",
                    "requests",
                    "rate_limit_exceeded",
                    headers=[
                        (b"retry-after-ms", f"{wait * 1000:.0f}".encode()),
                        (b"retry-after", f"{math.ceil(wait)}".encode()),
                    ],
                )
                return
            started.append(now)
        if self._poison is not None and self._poison in body_bytes:
            self.state.poisoned += 1
            await self._error(send, 500, "The server had an error while processing your request.", "server_error", None)
            return
        storm = self.options.storm_seconds and time.monotonic() - self._born < self.options.storm_seconds
        fault = "429" if storm or self.state.requests_served <= self.options.fail_first else self._draw_fault()
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000)
        if fault == "429" and deployment is not None:
            wait = self.options.retry_after
            await self._azure_error(
                send,
                429,
                "429",
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                f"{parse_qs(query)['api-version'][0]} have exceeded call rate limit of your current OpenAI S0 "
                f"pricing tier. Please retry after {math.ceil(wait)} seconds.",
                headers=[
                    (b"retry-after-ms", f"{wait * 1000:.0f}".encode()),
                    (b"retry-after", f"{math.ceil(wait)}".encode()),
                ],
            )
            return
        if fault == "429":
            await self._error(
                send,
                429,
                "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1.",
                "requests",
                "rate_limit_exceeded",
                headers=[(b"retry-after", f"{self.options.retry_after:g}".encode())],
            )
            return
        if fault == "500":
            await self._error(send, 500, "The server had an error while processing your request.", "server_error", None)
            return
        if fault == "hang":
            # Answer nothing until the client goes away.
            while (await receive())["type"] != "http.disconnect":
                pass
            return

        if path == "/embeddings":
            await self._embeddings(send, body)
        elif body.get("stream"):
            await self._stream(send, body, chat=path == "/chat/completions", drop=fault == "drop")
        else:
            await self._complete(send, body, chat=path == "/chat/completions")

    # -- pieces ----------------------------------------------------------------------------

    def _draw_fault(self) -> str | None:
        if not self._fault_total:
            return None
        o = self.options
        r = self._rng.random()
        for name, rate in (
            ("429", o.rate_429),
            ("500", o.rate_500),
            ("hang", o.rate_hang),
            ("drop", o.rate_drop),
        ):
            if r < rate:
                return name
            r -= rate
        return None

    @staticmethod
    async def _read(receive: Any) -> bytes:
        message = await receive()
        body: bytes = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        return body

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "quotagate-mock"}

    @staticmethod
    async def _json(send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _JSON + (headers or [])})
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})

    async def _error(
        self,
        send: Any,
        status: int,
        message: str,
        kind: str,
        code: str | None,
        headers: list[tuple[bytes, bytes]] | None = None,
        param: str | None = None,
    ) -> None:
        await self._json(
            send, status, {"error": {"message": message, "type": kind, "param": param, "code": code}}, headers
        )

    async def _azure_error(
        self, send: Any, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self._json(send, status, {"error": {"code": code, "message": message}}, headers)

    def _budget(self, body: dict[str, Any]) -> tuple[int, str]:
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        n = self.options.completion_tokens
        if isinstance(cap, int) and 0 < cap < n:
            return cap, "length"
        return n, "stop"

    @staticmethod
    def _prompt_tokens(body: dict[str, Any], chat: bool) -> int:
        encoding = encoding_for_model(body["model"])
        if chat:
            return count_chat_tokens(body, encoding)
        return count_prompt_input(body.get("prompt"), encoding)

    def _ids(self, chat: bool) -> tuple[str, str]:
        return (
            f"{'chatcmpl' if chat else 'cmpl'}-{self._rng.getrandbits(64):016x}",
            "chat.completion" if chat else "text_completion",
        )

    async def _complete(self, send: Any, body: dict[str, Any], chat: bool) -> None:
        n, finish = self._budget(body)
        text, _, completion_tokens = _completion(n)
        prompt_tokens = self._prompt_tokens(body, chat)
        self.state.tokens_served += prompt_tokens + completion_tokens
        response_id, kind = self._ids(chat)
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        await self._json(
            send,
            200,
            {
                "id": response_id,
                "object": kind,
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": "fp_quotagate_mock",
            },
        )

    async def _stream(self, send: Any, body: dict[str, Any], chat: bool, drop: bool) -> None:
        n, finish = self._budget(body)
        _, pieces, completion_tokens = _completion(n)
        prompt_tokens = self._prompt_tokens(body, chat)
        if not drop:
            self.state.tokens_served += prompt_tokens + completion_tokens
        response_id, kind = self._ids(chat)
        kind += ".chunk" if chat else ""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head = {
            "id": response_id,
            "object": kind,
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_quotagate_mock",
        }
        usage_null = {"usage": None} if include_usage else {}

        def event(choice: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": [choice], **usage_null}) + b"\n\n"

        events: list[bytes] = []
        if chat:
            events.append(
                event(
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            )
            events.extend(
                event({"index": 0, "delta": {"content": p}, "logprobs": None, "finish_reason": None}) for p in pieces
            )
            events.append(event({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}))
        else:
            events.extend(event({"index": 0, "text": p, "logprobs": None, "finish_reason": None}) for p in pieces)
            events.append(event({"index": 0, "text": "", "logprobs": None, "finish_reason": finish}))
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")

        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        if drop:
            # Half the stream, then the connection is cut: no final chunk, no [DONE].
            await send(
                {
                    "type": "http.response.body",
                    "body": b"".join(events[: len(events) // 2]),
                    "more_body": True,
                }
            )
            raise DroppedConnection("fault injected: stream dropped midway")
        delay = self.options.stream_chunk_delay_ms / 1000
        if delay:
            for item in events:
                await send({"type": "http.response.body", "body": item, "more_body": True})
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})

    @cached_property
    def _other_endpoints(self) -> OtherEndpoints:
        return OtherEndpoints(self)

    async def _embeddings(self, send: Any, body: dict[str, Any]) -> None:
        raw_input = body.get("input")
        inputs: list[Any] = (
            raw_input
            if isinstance(raw_input, list) and raw_input and not isinstance(raw_input[0], int)
            else [raw_input]
        )
        encoding = encoding_for_model(body["model"])
        # Checked as OpenAI checks them, before any work: a vector of 2**63 floats was built
        # element by element before (the mock spun at 100 % CPU), and a list of a million inputs
        # would be much the same.
        refused = _embeddings_refusal(body.get("dimensions"), self.options.embedding_dimensions, len(inputs))
        if refused is not None:
            message, param, code = refused
            await self._error(send, 400, message, "invalid_request_error", code, param=param)
            return
        dims = body.get("dimensions") or self.options.embedding_dimensions
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(orjson.dumps(item), dims)
            embedding: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = count_prompt_input(raw_input, encoding)
        await self._json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


# OpenAI's limit on the inputs of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048


def _embeddings_refusal(dimensions: object, native: int, inputs: int) -> tuple[str, str, str] | None:
    """(message, param, code) of the 400 OpenAI answers for these, or None when they are valid:
    ``dimensions`` an integer from 1 to the model's own size, at most 2048 inputs."""
    if inputs > MAX_EMBEDDING_INPUTS:
        return (
            f"Invalid 'input': maximum input array size is {MAX_EMBEDDING_INPUTS}, got {inputs}.",
            "input",
            "array_above_max_length",
        )
    if dimensions is None:
        return None
    if type(dimensions) is not int:  # bool is an int to Python, not to OpenAI
        return (
            f"Invalid type for 'dimensions': expected an integer, but got {type(dimensions).__name__} instead.",
            "dimensions",
            "invalid_type",
        )
    if dimensions < 1:
        return (
            f"Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {dimensions} instead.",
            "dimensions",
            "integer_below_min_value",
        )
    if dimensions > native:
        return (
            f"Invalid 'dimensions': integer above maximum value. Expected a value <= {native}, "
            f"but got {dimensions} instead.",
            "dimensions",
            "integer_above_max_value",
        )
    return None


@lru_cache(maxsize=1024)
def _vector(seed: bytes, dims: int) -> list[float]:
    # Deterministic per input, unit length: equal inputs get equal embeddings, as with a real model.
    rng = random.Random(hashlib.blake2b(seed, digest_size=8).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


# -- the other OpenAI endpoints, which the gateway relays as they come (its passthrough) --------


def speech_audio(text: str, size: int = 6 * 1024) -> bytes:
    """The "audio" POST /v1/audio/speech answers for ``text``: ``size`` bytes, the same each time."""
    return b"ID3" + hashlib.shake_256(text.encode()).digest(size - 3)


_FORM_NAME = re.compile(rb'[;\s]name="([^"]*)"')
_FORM_FILENAME = re.compile(rb'[;\s]filename="([^"]*)"')


def _form(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body's parts: name -> (filename or None, value)."""
    boundary = content_type.partition("boundary=")[2].partition(";")[0].strip().strip('"')
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = _FORM_NAME.search(head)
        filename = _FORM_FILENAME.search(head)
        if name is not None:
            parts[name.group(1).decode()] = (
                filename.group(1).decode() if filename is not None else None,
                value.removesuffix(b"\r\n"),
            )
    return parts


class OtherEndpoints:
    """Moderations, images, audio (speech, transcriptions), files, batches and the Responses API
    (see _responses), kept in memory:
    enough for the OpenAI SDK's calls to work through the gateway, and for a test to see what
    arrived (a recorded multipart body lists its fields, and each file's size and sha256)."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.responses = MockResponses(mock)

    async def serve(self, scope: Scope, receive: Any, send: Any, method: str, path: str) -> bool:
        """Answer the request if it is for one of these endpoints (False: it is not)."""
        parts = path.strip("/").split("/")
        known = (
            (method, *parts[:1], *parts[2:])
            if len(parts) > 1 and parts[0] in ("files", "batches", "responses")
            else None
        )
        routes = {
            ("POST", "moderations"): self._moderation,
            ("POST", "images", "generations"): self._image,
            ("POST", "audio", "speech"): self._speech,
            ("POST", "audio", "transcriptions"): self._transcription,
            ("GET", "files"): self._list_files,
            ("POST", "files"): self._create_file,
            ("POST", "batches"): self._create_batch,
            ("POST", "responses"): self.responses.create,
        }
        by_id = {
            ("GET", "files"): self._file,
            ("DELETE", "files"): self._delete_file,
            ("GET", "files", "content"): self._file_content,
            ("GET", "batches"): self._batch,
            ("GET", "responses"): self.responses.retrieve,
            ("DELETE", "responses"): self.responses.delete,
            ("GET", "responses", "input_items"): self.responses.input_items,
            ("POST", "responses", "cancel"): self.responses.cancel,
        }
        handler = routes.get((method, *parts)) or (by_id.get(known) if known is not None else None)
        if handler is None:
            return False
        mock = self.mock
        raw = await mock._read(receive)
        if mock._auth is not None and (b"authorization", mock._auth) not in scope["headers"]:
            await mock._error(send, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return True
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        form = _form(raw, content_type) if content_type.startswith("multipart/form-data") else {}
        try:
            body = orjson.loads(raw) if raw and not form else {}
        except orjson.JSONDecodeError:
            await mock._error(
                send, 400, "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
            return True
        if mock.options.record:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            shown: Any = body
            if form:
                shown = {
                    name: value.decode(errors="replace")
                    if filename is None
                    else {"filename": filename, "bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
                    for name, (filename, value) in form.items()
                }
            mock.state.recorded.append(RecordedRequest(scope["path"], headers, shown))
        mock.state.requests_served += 1
        await handler(send, body, form, parts[1] if known is not None else "")
        return True

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{self.mock._rng.getrandbits(64):016x}"

    async def _not_found(self, send: Any, kind: str, object_id: str) -> None:
        await self.mock._error(
            send, 404, f"No such {kind} object: {object_id}", "invalid_request_error", None, param="id"
        )

    async def _moderation(self, send: Any, body: dict[str, Any], form: Any, object_id: str) -> None:
        given = body.get("input")
        inputs = given if isinstance(given, list) else [given]
        results = []
        for text in inputs:
            flagged = isinstance(text, str) and "violence" in text
            categories = {"harassment": False, "hate": False, "self-harm": False, "sexual": False, "violence": flagged}
            results.append(
                {
                    "flagged": flagged,
                    "categories": categories,
                    "category_scores": {name: 0.9 if hit else 0.001 for name, hit in categories.items()},
                }
            )
        model = body.get("model") or "omni-moderation-latest"
        await self.mock._json(send, 200, {"id": self._new_id("modr-"), "model": model, "results": results})

    async def _image(self, send: Any, body: dict[str, Any], form: Any, object_id: str) -> None:
        prompt = str(body.get("prompt", ""))
        given = body.get("n")
        n = given if isinstance(given, int) and 0 < given <= 10 else 1
        image = base64.b64encode(hashlib.shake_256(prompt.encode()).digest(64)).decode()
        words = len(prompt.split())
        usage = {
            "input_tokens": words,
            "input_tokens_details": {"text_tokens": words, "image_tokens": 0},
            "output_tokens": 272 * n,
            "total_tokens": words + 272 * n,
        }
        data = [{"b64_json": image} for _ in range(n)]
        await self.mock._json(send, 200, {"created": int(time.time()), "data": data, "usage": usage})

    async def _speech(self, send: Any, body: dict[str, Any], form: Any, object_id: str) -> None:
        audio = speech_audio(str(body.get("input", "")))
        # No Content-Length: sent chunked, in pieces, as a provider streams audio.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"audio/mpeg")]})
        for start in range(0, len(audio), 1024):
            await send({"type": "http.response.body", "body": audio[start : start + 1024], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _transcription(
        self, send: Any, body: Any, form: dict[str, tuple[str | None, bytes]], object_id: str
    ) -> None:
        if "file" not in form or "model" not in form:
            await self.mock._error(send, 400, "file and model are required.", "invalid_request_error", None)
            return
        audio = form["file"][1]
        text = f"heard {len(audio)} bytes, sha256 {hashlib.sha256(audio).hexdigest()}"
        if form.get("response_format", (None, b"json"))[1] == b"text":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": text.encode()})
            return
        heard = max(1, len(audio) // 1000)
        usage = {
            "type": "tokens",
            "input_tokens": heard,
            "input_token_details": {"text_tokens": 0, "audio_tokens": heard},
            "output_tokens": 8,
            "total_tokens": heard + 8,
        }
        await self.mock._json(send, 200, {"text": text, "usage": usage})

    async def _list_files(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        await self.mock._json(send, 200, {"object": "list", "data": list(self.files.values()), "has_more": False})

    async def _create_file(
        self, send: Any, body: Any, form: dict[str, tuple[str | None, bytes]], object_id: str
    ) -> None:
        if "file" not in form or "purpose" not in form:
            await self.mock._error(send, 400, "file and purpose are required.", "invalid_request_error", None)
            return
        filename, content = form["file"]
        file_id = self._new_id("file-")
        self.contents[file_id] = content
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename or "file",
            "purpose": form["purpose"][1].decode(),
            "status": "processed",
        }
        await self.mock._json(send, 200, self.files[file_id])

    async def _file(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if object_id not in self.files:
            await self._not_found(send, "File", object_id)
            return
        await self.mock._json(send, 200, self.files[object_id])

    async def _delete_file(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if self.files.pop(object_id, None) is None:
            await self._not_found(send, "File", object_id)
            return
        del self.contents[object_id]
        await self.mock._json(send, 200, {"id": object_id, "object": "file", "deleted": True})

    async def _file_content(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if object_id not in self.contents:
            await self._not_found(send, "File", object_id)
            return
        content = self.contents[object_id]
        head = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": content})

    async def _create_batch(self, send: Any, body: dict[str, Any], form: Any, object_id: str) -> None:
        input_file = body.get("input_file_id")
        if input_file not in self.files:
            await self.mock._error(
                send, 400, f"No such File object: {input_file}", "invalid_request_error", None, param="input_file_id"
            )
            return
        batch_id = self._new_id("batch_")
        now = int(time.time())
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "errors": None,
            "input_file_id": input_file,
            "completion_window": body.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "expires_at": now + 86400,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        await self.mock._json(send, 200, self.batches[batch_id])

    async def _batch(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if object_id not in self.batches:
            await self._not_found(send, "Batch", object_id)
            return
        await self.mock._json(send, 200, self.batches[object_id])
