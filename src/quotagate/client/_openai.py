"""The OpenAI SDK, limited: ``limited(OpenAI(...), rpm=500, tpm=120_000)``.

The wrapper is a copy of the client whose one entry point for API calls (``request``) first
estimates the call's tokens with the model's tokenizer and acquires the limits (waiting up to
``max_wait``), retries 429s, 5xx, timeouts and connection errors with exponential backoff and
full jitter (honouring Retry-After), and settles the token limits with the response's usage.
Everything else is the SDK's own: the same methods, the same types, streams included (their
usage is read as they pass; a usage chunk the caller did not ask for is hidden).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar, overload

import openai

from ..tokens import ZERO, Estimate, count_generated, estimate_tokens
from ..tokens._estimate import Kind
from ._ratelimiter import Permit, RateLimiter
from ._retry import RETRYABLE, RetryPolicy

ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)

_KINDS: dict[str, Kind] = {
    "/chat/completions": "chat",
    "/completions": "completion",
    "/embeddings": "embedding",
}


def _default_name(client: openai.OpenAI | openai.AsyncOpenAI) -> str:
    # One limit per provider account: the same base URL and key share it, across processes too.
    digest = hashlib.sha256(str(client.api_key).encode()).hexdigest()[:12]
    return f"{client.base_url.host}:{digest}"


def _usage_total(usage: Any) -> int | None:
    if usage is None:
        return None
    for prompt_name, output_name in (
        ("prompt_tokens", "completion_tokens"),
        ("input_tokens", "output_tokens"),
    ):
        prompt = getattr(usage, prompt_name, None)
        if isinstance(prompt, int):
            output = getattr(usage, output_name, None)
            return prompt + (output if isinstance(output, int) else 0)
    return None


def _chunk_text(chunk: Any) -> str:
    parts = []
    for choice in getattr(chunk, "choices", None) or ():
        delta = getattr(choice, "delta", None)
        content = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


class _Call:
    """What one API call needs to know: its estimate, and whether we asked for stream usage."""

    def __init__(self, limiter: RateLimiter, options: Any, stream: bool, expected_output: int) -> None:
        body = options.json_data if isinstance(options.json_data, dict) else None
        kind = _KINDS.get(options.url)
        self.model = body.get("model") if body else None
        self.estimate: Estimate = ZERO
        self.hide_usage_chunk = False
        self.options = options
        if limiter.counts_tokens and body is not None and kind is not None and isinstance(self.model, str):
            self.estimate = estimate_tokens(kind, body, self.model, expected_output, None)
            stream_options = body.get("stream_options")
            if (
                stream
                and kind != "embedding"
                and not (isinstance(stream_options, dict) and stream_options.get("include_usage"))
            ):
                extra = {
                    **(stream_options if isinstance(stream_options, dict) else {}),
                    "include_usage": True,
                }
                self.options = options.model_copy(update={"json_data": {**body, "stream_options": extra}})
                self.hide_usage_chunk = True

    def actual(self, usage_total: int | None, generated: str) -> int:
        if usage_total is not None:
            return usage_total
        return self.estimate.prompt + (count_generated(generated, self.model) if isinstance(self.model, str) else 0)


class _StreamWatch:
    """What a stream carried so far; one per stream, for the sync and async watchers alike."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.usage_total: int | None = None
        self.generated: list[str] = []

    def keep(self, chunk: Any) -> bool:
        """Note the chunk's usage and text; False for the usage chunk the caller did not ask for."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage_total = _usage_total(usage)
            if self.call.hide_usage_chunk and not chunk.choices:
                return False
        self.generated.append(_chunk_text(chunk))
        return True

    def used(self) -> int:
        return self.call.actual(self.usage_total, "".join(self.generated))


def _sync_request(client: openai.OpenAI, limiter: RateLimiter, retry: RetryPolicy, expected_output: int) -> Any:
    original = client.request

    def request(cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
        call = _Call(limiter, options, stream, expected_output)
        attempt = 0
        while True:
            permit = limiter.acquire(call.estimate.total)
            permit.__enter__()
            try:
                result = original(cast_to, call.options, stream=stream, stream_cls=stream_cls)
            except RETRYABLE as exc:
                permit.settle(0)  # the provider generated nothing
                permit.__exit__(None, None, None)
                if attempt >= retry.max_retries:
                    raise
                time.sleep(retry.delay(attempt, exc))
                attempt += 1
                continue
            except BaseException:
                permit.settle(0)
                permit.__exit__(None, None, None)
                raise
            if isinstance(result, openai.Stream):
                result._iterator = _watch_sync_stream(result._iterator, permit, call)
                return result
            total = _usage_total(getattr(result, "usage", None))
            if total is not None:
                permit.settle(total)
            permit.__exit__(None, None, None)
            return result

    return request


def _watch_sync_stream(chunks: Iterator[Any], permit: Permit, call: _Call) -> Iterator[Any]:
    watch = _StreamWatch(call)
    try:
        for chunk in chunks:
            if watch.keep(chunk):
                yield chunk
    finally:
        # Ends, breaks off, or is dropped: settle on what the stream actually carried.
        permit.settle(watch.used())
        permit.__exit__(None, None, None)


def _async_request(client: openai.AsyncOpenAI, limiter: RateLimiter, retry: RetryPolicy, expected_output: int) -> Any:
    original = client.request

    async def request(cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
        call = _Call(limiter, options, stream, expected_output)
        attempt = 0
        while True:
            permit = limiter.acquire(call.estimate.total)
            await permit.__aenter__()
            try:
                result = await original(cast_to, call.options, stream=stream, stream_cls=stream_cls)
            except RETRYABLE as exc:
                permit.settle(0)
                await permit.__aexit__(None, None, None)
                if attempt >= retry.max_retries:
                    raise
                await asyncio.sleep(retry.delay(attempt, exc))
                attempt += 1
                continue
            except BaseException:
                permit.settle(0)
                await permit.__aexit__(None, None, None)
                raise
            if isinstance(result, openai.AsyncStream):
                result._iterator = _watch_async_stream(result._iterator, permit, call)
                return result
            total = _usage_total(getattr(result, "usage", None))
            if total is not None:
                permit.settle(total)
            await permit.__aexit__(None, None, None)
            return result

    return request


async def _watch_async_stream(chunks: AsyncIterator[Any], permit: Permit, call: _Call) -> AsyncIterator[Any]:
    watch = _StreamWatch(call)
    try:
        async for chunk in chunks:
            if watch.keep(chunk):
                yield chunk
    finally:
        permit.settle(watch.used())
        await permit.__aexit__(None, None, None)


@overload
def limited(client: openai.OpenAI, *, limiter: RateLimiter | None = ..., **kwargs: Any) -> openai.OpenAI: ...
@overload
def limited(client: openai.AsyncOpenAI, *, limiter: RateLimiter | None = ..., **kwargs: Any) -> openai.AsyncOpenAI: ...


def limited(
    client: openai.OpenAI | openai.AsyncOpenAI,
    *,
    limiter: RateLimiter | None = None,
    max_retries: int = 4,
    expected_output_tokens: int = 512,
    **limits: Any,
) -> openai.OpenAI | openai.AsyncOpenAI:
    """A copy of ``client`` that keeps under the given limits and retries what can be retried.

    ``limits`` are RateLimiter's arguments (rpm=, tpm=, rpd=, tpd=, concurrency=, store=,
    max_wait=, name=...); or pass a ready ``limiter`` to share one between clients.
    """
    if limiter is None:
        limits.setdefault("name", _default_name(client))
        limiter = RateLimiter(**limits)
    elif limits:
        raise TypeError("give either limiter= or limit arguments, not both")
    retry = RetryPolicy(max_retries=max_retries)
    # The SDK's own retries are turned off: ours acquire the limits again before each attempt.
    copy = client.with_options(max_retries=0)
    if isinstance(copy, openai.AsyncOpenAI):
        copy.request = _async_request(copy, limiter, retry, expected_output_tokens)  # type: ignore[method-assign]
    else:
        copy.request = _sync_request(copy, limiter, retry, expected_output_tokens)  # type: ignore[method-assign]
    copy.quotagate_limiter = limiter  # type: ignore[union-attr]
    return copy
