"""What a request will cost before it runs, and what it did cost after."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from ._counting import count_chat_tokens, count_prompt_input, count_text, encoding_for_model

Kind = Literal["chat", "completion", "embedding"]
# The legacy completions endpoint generates 16 tokens when max_tokens is not given.
LEGACY_COMPLETION_DEFAULT = 16


# A NamedTuple rather than a frozen dataclass: one is made per request, and a frozen dataclass
# sets each field through object.__setattr__, several times the cost of a plain class (bench/NOTES.md).
class Estimate(NamedTuple):
    prompt: int
    output: int

    @property
    def total(self) -> int:
        return self.prompt + self.output


ZERO = Estimate(0, 0)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def estimate_tokens(
    kind: Kind, body: dict[str, Any], model: str, expected_output: int, context_window: int | None
) -> Estimate:
    """Prompt tokens counted with the model's tokenizer, plus the most it may generate.

    The output part is max_completion_tokens / max_tokens (or ``expected_output`` when neither
    is set), times ``n``; with a known context window the whole estimate never exceeds it.
    """
    encoding = encoding_for_model(model)
    if kind == "embedding":
        return Estimate(count_prompt_input(body.get("input"), encoding), 0)
    choices = _positive_int(body.get("n")) or 1
    if kind == "chat":
        prompt = count_chat_tokens(body, encoding)
        cap = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
        output = (cap or expected_output) * choices
    else:
        raw = body.get("prompt")
        prompt = count_prompt_input(raw, encoding)
        prompts = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
        output = (_positive_int(body.get("max_tokens")) or LEGACY_COMPLETION_DEFAULT) * choices * prompts
    if context_window is not None:
        output = max(0, min(output, context_window - prompt))
    return Estimate(prompt, output)


def usage_details(payload: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, cached prompt) tokens of a response's or a chunk's ``usage``, if it
    has one (cached: ``usage.prompt_tokens_details.cached_tokens``)."""
    usage = payload.get("usage") if type(payload) is dict else None
    if type(usage) is not dict:
        return None
    prompt = usage.get("prompt_tokens")
    if type(prompt) is not int:
        return None
    completion = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    return prompt, completion if type(completion) is int else 0, cached if type(cached) is int else 0


def generated_text(payload: Any) -> str:
    """The text a response or chunk carries (chat message or delta, or completion text)."""
    if not isinstance(payload, dict):
        return ""
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return ""
    parts: list[str] = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("delta"), choice.get("message")):
            if isinstance(holder, dict) and isinstance(holder.get("content"), str):
                parts.append(holder["content"])
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


def count_generated(text: str, model: str) -> int:
    return count_text(text, encoding_for_model(model)) if text else 0
