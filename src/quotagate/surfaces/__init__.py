"""Surface adapters: one client wire format to another, as pure functions (no I/O).

``_anthropic`` translates between Anthropic's Messages API and OpenAI's chat completions, both
ways: requests, responses, server-sent event streams and errors.
"""

from ._anthropic import (
    DEFAULT_MAX_TOKENS,
    ChatStreamToMessages,
    MessagesStreamToChat,
    SSEDecoder,
    anthropic_error,
    anthropic_error_for,
    anthropic_error_type,
    chat_to_messages,
    chat_to_messages_response,
    messages_text,
    messages_to_chat,
    messages_to_chat_response,
    messages_usage,
    openai_error_from_anthropic,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatStreamToMessages",
    "MessagesStreamToChat",
    "SSEDecoder",
    "anthropic_error",
    "anthropic_error_for",
    "anthropic_error_type",
    "chat_to_messages",
    "chat_to_messages_response",
    "messages_text",
    "messages_to_chat",
    "messages_to_chat_response",
    "messages_usage",
    "openai_error_from_anthropic",
]
