"""Reading usage out of a stream as it passes.

The gateway asks every upstream stream for a final usage chunk (``stream_options.include_usage``)
so that token limits settle on what the provider reports. When the client did not ask for that
chunk, it is taken out of what the client receives. If the stream ends without one (the client
left, the provider broke off), the text that did pass is counted with the tokenizer.
"""

from __future__ import annotations

import orjson

from ..tokens import generated_text, usage_details

# The most of a stream kept for the response cache: a chat answer is a few kB; the rest of such a
# stream is relayed, never buffered whole.
MAX_KEPT_BYTES = 4 * 1024 * 1024


class StreamUsage:
    __slots__ = ("_strip", "cached", "events", "pieces", "usage")

    def __init__(self, strip_usage_chunk: bool, keep_events: bool = False) -> None:
        self._strip = strip_usage_chunk
        # The stream as the provider sent it, for the response cache to keep once it is complete.
        self.events: bytearray | None = bytearray() if keep_events else None
        self.usage: tuple[int, int] | None = None
        self.pieces: list[str] = []
        self.cached = 0

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
