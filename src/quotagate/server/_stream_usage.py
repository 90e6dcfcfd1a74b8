"""Reading usage out of a stream as it passes, and making it the client's.

The gateway asks every upstream stream for a final usage chunk (``stream_options.include_usage``)
so that token limits settle on what the provider reports. When the client did not ask for that
chunk, it is taken out of what the client receives. If the stream ends without one (the client
left, the provider broke off), the text that did pass is counted with the tokenizer.

``StreamUsage`` reads an OpenAI chat (or completions) stream, ``MessagesStreamUsage`` an Anthropic
Messages stream (its usage is in message_start and message_delta); ``TranslatedStream`` puts one
of them in front of a translator (surfaces/) where the client speaks the other API. Each also
says how the client's API tells it of an error once the stream has begun (``error_event``).
"""

from __future__ import annotations

from typing import Protocol

import orjson

from ..errors import GatewayError
from ..surfaces import anthropic_error_for, messages_text, messages_usage
from ..tokens import generated_text, usage_details

# The most of a stream kept for the response cache: a chat answer is a few kB; the rest of such a
# stream is relayed, never buffered whole.
MAX_KEPT_BYTES = 4 * 1024 * 1024


class StreamReader(Protocol):
    """What the relay needs of a stream: the client's bytes for each run of whole events, the
    usage (prompt, completion) and cache read and written tokens once reported, the text that
    passed (counted if no usage came), the events for the cache to keep (None: not kept)."""

    @property
    def usage(self) -> tuple[int, int] | None: ...
    @property
    def prompt(self) -> int | None:
        """The prompt's tokens as reported before the usage (None: not reported apart)."""
        ...

    @property
    def cached(self) -> int: ...
    @property
    def cache_written(self) -> int: ...
    @property
    def pieces(self) -> list[str]: ...
    @property
    def events(self) -> bytearray | None: ...

    def feed(self, events: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """What the client gets after the upstream's last event (a translated stream's close)."""
        ...

    def error_event(self, exc: GatewayError) -> bytes:
        """The event that tells the client of ``exc``, once the stream has begun."""
        ...


class StreamUsage:
    """An OpenAI stream, relayed as it came but for the usage chunk the client did not ask for."""

    __slots__ = ("_strip", "cache_written", "cached", "events", "pieces", "prompt", "usage")

    def __init__(self, strip_usage_chunk: bool, keep_events: bool = False) -> None:
        self._strip = strip_usage_chunk
        self.prompt: int | None = None  # OpenAI's streams report the prompt with the rest, at the end
        # The stream as the provider sent it, for the response cache to keep once it is complete.
        self.events: bytearray | None = bytearray() if keep_events else None
        self.usage: tuple[int, int] | None = None
        self.pieces: list[str] = []
        self.cached = 0
        self.cache_written = 0

    def finish(self) -> bytes:
        return b""

    def error_event(self, exc: GatewayError) -> bytes:
        return _openai_error_event(exc)

    def feed(self, events: bytes) -> bytes:
        """Take complete SSE events; return what the client should receive of them."""
        if self.events is not None:
            self.events += events
            if len(self.events) > MAX_KEPT_BYTES:
                self.events = None  # an answer this long is not one to keep in a cache
        if b"\r" in events:
            events = events.replace(b"\r\n", b"\n")  # SSE allows either; one is simpler to split
        parts = events.split(b"\n\n")
        drop = -1
        for index, event in enumerate(parts):
            data = event.strip()
            if not data.startswith(b"data:") or data.endswith(b"[DONE]"):
                continue
            try:
                payload = orjson.loads(data[5:])
            except orjson.JSONDecodeError:
                continue
            details = usage_details(payload)
            if details is not None:
                self.usage = (details[0], details[1])
                self.cached = details[2]
                if self._strip and not payload.get("choices"):
                    drop = index
                    continue
            text = generated_text(payload)
            if text:
                self.pieces.append(text)
        if drop < 0:
            return events
        return b"\n\n".join(parts[:drop] + parts[drop + 1 :])


class MessagesStreamUsage:
    """An Anthropic Messages stream, relayed as it came: the prompt's tokens (cache reads and
    writes apart) come in message_start, the output's in message_delta (cumulative)."""

    __slots__ = ("_reported", "cache_written", "cached", "events", "pieces", "prompt", "usage")

    def __init__(self) -> None:
        self.events: bytearray | None = None  # the Messages surface has no response cache
        self.usage: tuple[int, int] | None = None
        # message_start's: what a stream that breaks off (a client that leaves) is charged for
        # its prompt, with its cache reads and writes, rather than the estimate.
        self.prompt: int | None = None
        self.pieces: list[str] = []
        self.cached = 0
        self.cache_written = 0
        self._reported: dict[str, object] = {}  # Anthropic's usage fields, as reported so far

    def feed(self, events: bytes) -> bytes:
        for line in events.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if type(event) is not dict:
                continue
            kind = event.get("type")
            if kind == "content_block_delta":
                text = messages_text(event.get("delta"))
                if text:
                    self.pieces.append(text)
            elif kind == "message_start":
                message = event.get("message")
                usage = message.get("usage") if type(message) is dict else None
                if type(usage) is dict:
                    self._reported = usage
                    self._note(usage=False)
            elif kind == "message_delta":
                # Its usage is cumulative, and may leave out the prompt's figures (message_start's).
                usage = event.get("usage")
                if type(usage) is dict:
                    self._reported = {**self._reported, **{k: v for k, v in usage.items() if v is not None}}
                    self._note(usage=True)
        return events

    def _note(self, usage: bool) -> None:
        used = messages_usage(self._reported)
        if used is not None:
            self.prompt, self.cached, self.cache_written = used[0], used[2], used[3]
            if usage:
                self.usage = used[:2]

    def finish(self) -> bytes:
        return b""

    def error_event(self, exc: GatewayError) -> bytes:
        return _anthropic_error_event(exc)


def _openai_error_event(exc: GatewayError) -> bytes:
    # The OpenAI SDKs raise an event holding an error object as an APIError.
    return b"data: " + exc.body() + b"\n\n"


def _anthropic_error_event(exc: GatewayError) -> bytes:
    return b"event: error\ndata: " + anthropic_error_for(exc)[1] + b"\n\n"


class Translator(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...


class TranslatedStream:
    """A stream read for its usage in the deployment's API (``reader``), and translated to the
    client's (``translator``: surfaces' MessagesStreamToChat or ChatStreamToMessages)."""

    __slots__ = ("_anthropic_client", "_reader", "_translator", "events")

    def __init__(
        self, reader: StreamReader, translator: Translator, anthropic_client: bool, keep_events: bool = False
    ) -> None:
        self._reader = reader
        self._translator = translator
        self._anthropic_client = anthropic_client
        # What the client received, for the response cache (which keeps the client's form).
        self.events: bytearray | None = bytearray() if keep_events else None

    @property
    def usage(self) -> tuple[int, int] | None:
        return self._reader.usage

    @property
    def prompt(self) -> int | None:
        return self._reader.prompt

    @property
    def cached(self) -> int:
        return self._reader.cached

    @property
    def cache_written(self) -> int:
        return self._reader.cache_written

    @property
    def pieces(self) -> list[str]:
        return self._reader.pieces

    def feed(self, events: bytes) -> bytes:
        out = self._translator.feed(self._reader.feed(events))
        self._keep(out)
        return out

    def finish(self) -> bytes:
        finish = getattr(self._translator, "finish", None)
        out: bytes = finish() if finish is not None else b""
        self._keep(out)
        return out

    def error_event(self, exc: GatewayError) -> bytes:
        return _anthropic_error_event(exc) if self._anthropic_client else _openai_error_event(exc)

    def _keep(self, out: bytes) -> None:
        if self.events is not None and out:
            self.events += out
            if len(self.events) > MAX_KEPT_BYTES:
                self.events = None
