"""Counting the tokens of OpenAI-shaped requests.

Models are mapped to the encoding their provider uses; models whose tokenizer is not public
(Claude, Gemini, DeepSeek) are counted with o200k_base, which is close for English text and code.
The chat overheads follow OpenAI's published recipe (3 tokens per message, 1 per name, 3 to prime
the reply).
"""

from __future__ import annotations

from typing import Any

import orjson
import tiktoken

from ._encodings import get_encoding

_CL100K_PREFIXES = ("gpt-4-", "gpt-4", "gpt-3.5", "text-embedding-", "text-davinci", "davinci", "babbage")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-", "gpt-oss")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# What OpenAI bills for one image part: 85 at low detail; a typical high-detail 1024x1024 image
# is 85 + 170 x 4 tiles. The image itself is not decoded here.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_HIGH = 765


def encoding_name_for_model(model: str) -> str:
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


_by_model: dict[str, tiktoken.Encoding] = {}


def encoding_for_model(model: str) -> tiktoken.Encoding:
    # Asked on every request: one dictionary lookup instead of the name rules and the loader's lock.
    encoding = _by_model.get(model)
    if encoding is None:
        encoding = get_encoding(encoding_name_for_model(model))
        if len(_by_model) < 10_000:  # model names can come from callers: keep the table bounded
            _by_model[model] = encoding
    return encoding


def count_text(text: str, encoding: tiktoken.Encoding) -> int:
    # encode_ordinary: user text containing "<|endoftext|>" is text, not a special token.
    return len(encoding.encode_ordinary(text))


def _count_content(content: Any, encoding: tiktoken.Encoding) -> int:
    if isinstance(content, str):
        return count_text(content, encoding)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                total += count_text(part["text"], encoding)
            elif kind == "image_url":
                image = part.get("image_url")
                low = isinstance(image, dict) and image.get("detail") == "low"
                total += IMAGE_TOKENS_LOW if low else IMAGE_TOKENS_HIGH
            elif kind == "input_audio" or kind == "file":
                # Binary payloads are billed by their own rules; count their JSON as a floor.
                total += count_text(orjson.dumps(part).decode(), encoding) // 4
        return total
    return 0


def count_chat_tokens(body: dict[str, Any], encoding: tiktoken.Encoding) -> int:
    """Prompt tokens of a chat completions request: messages, tool definitions, tool calls."""
    total = REPLY_PRIMING
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += TOKENS_PER_MESSAGE
            total += _count_content(message.get("content"), encoding)
            if isinstance(message.get("name"), str):
                total += TOKENS_PER_NAME + count_text(message["name"], encoding)
            tool_calls = message.get("tool_calls")
            if tool_calls:
                total += count_text(orjson.dumps(tool_calls).decode(), encoding)
    tools = body.get("tools")
    if tools:
        total += count_text(orjson.dumps(tools).decode(), encoding)
    return total


def count_prompt_input(prompt: Any, encoding: tiktoken.Encoding) -> int:
    """Tokens of a completions ``prompt`` or an embeddings ``input``: text, texts or token ids."""
    if isinstance(prompt, str):
        return count_text(prompt, encoding)
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += count_text(item, encoding)
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return total
    return 0
