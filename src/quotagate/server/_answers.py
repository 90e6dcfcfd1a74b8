"""How a deployment's answer becomes the client's: its usage read in the deployment's API, the
answer translated to the client's API where the two differ.

    the client speaks    the deployment speaks   its answer                its stream
    OpenAI (chat, ...)   OpenAI                  as it came                StreamUsage
    OpenAI chat          Anthropic Messages      messages_to_chat_response MessagesStreamToChat
    Anthropic Messages   Anthropic Messages      as it came                MessagesStreamUsage
    Anthropic Messages   OpenAI                  chat_to_messages_response ChatStreamToMessages

The translations are surfaces/'s pure functions; this module only picks them and notes on the
request's record what the answer used, in the figures the limits and the ledger count (the prompt
as all of its tokens, cache reads and writes apart).
"""

from __future__ import annotations

from typing import Any

from ..surfaces import (
    ChatStreamToMessages,
    MessagesStreamToChat,
    chat_to_messages_response,
    messages_text,
    messages_to_chat_response,
    messages_usage,
)
from ..tokens import generated_text, usage_details
from ..upstream import DeploymentTarget
from ._record import RequestRecord
from ._stream_usage import MessagesStreamUsage, StreamReader, StreamUsage, TranslatedStream

OPENAI = "openai"
ANTHROPIC = "anthropic"


def read_answer(client_api: str, target: DeploymentTarget, payload: Any, record: RequestRecord) -> Any:
    """Note on ``record`` what the whole answer ``payload`` (parsed) used; return the answer as
    the client gets it (``payload`` itself where no translation is needed)."""
    if target.api == ANTHROPIC:
        usage = messages_usage(payload.get("usage")) if isinstance(payload, dict) else None
        if usage is not None:
            record.reported, record.cached, record.cache_written = usage[:2], usage[2], usage[3]
        else:
            record.generated = messages_text(payload)
        if client_api == ANTHROPIC or not isinstance(payload, dict) or payload.get("type") != "message":
            return payload
        return messages_to_chat_response(payload, str(payload.get("model") or target.provider_model))
    details = usage_details(payload)
    if details is not None:
        record.reported, record.cached = (details[0], details[1]), details[2]
    else:
        record.generated = generated_text(payload)
    if client_api == OPENAI or not isinstance(payload, dict) or "choices" not in payload:
        return payload
    return chat_to_messages_response(payload, str(payload.get("model") or target.provider_model))


def stream_reader(
    client_api: str,
    target: DeploymentTarget,
    request_body: dict[str, Any],
    prompt_estimate: int,
    strip_usage_chunk: bool,
    keep_events: bool,
) -> StreamReader:
    """What reads the usage out of ``target``'s stream and makes it the client's."""
    if target.api == ANTHROPIC:
        if client_api == ANTHROPIC:
            return MessagesStreamUsage()
        options = request_body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return TranslatedStream(
            MessagesStreamUsage(), MessagesStreamToChat(target.provider_model, include_usage), False, keep_events
        )
    if client_api == OPENAI:
        return StreamUsage(strip_usage_chunk, keep_events)
    # Anthropic's message_start says the prompt's tokens before any are reported: the estimate.
    return TranslatedStream(StreamUsage(False), ChatStreamToMessages(target.provider_model, prompt_estimate), True)
