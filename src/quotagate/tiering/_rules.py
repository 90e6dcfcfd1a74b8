"""The rules classifier: conditions on what a request is (its size, turns, tools, images, JSON
mode, words, who asks) that give it a class without any model's help.

``RequestFacts`` reads each fact of a request the first time a rule asks for it; ``ClassRules``
is one class's rules, compiled once per configuration: keywords into one regular expression,
the rest into a list of checks, all of which must hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..auth import Principal
from ..config import RouteRules
from ..tokens import count_chat_tokens, encoding_for_model

# What an image part is called in the chat completions API (and the Responses API's input).
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (its text parts, joined); "" when there is none. What
    the keyword, regex and semantic classifiers read: the question being asked now, not the
    system prompt or the earlier turns."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and part.get("type") in ("text", "input_text")
                )
            return ""
    return ""


class RequestFacts:
    """What the rules read of one request, each worked out when a rule first asks for it."""

    __slots__ = ("_prompt_tokens", "_text", "body", "principal", "token_model")

    def __init__(self, body: dict[str, Any], principal: Principal, token_model: str) -> None:
        self.body = body
        self.principal = principal
        self.token_model = token_model  # whose tokenizer counts the prompt
        self._text: str | None = None
        self._prompt_tokens: int | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = last_user_text(self.body)
        return self._text

    @property
    def prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = count_chat_tokens(self.body, encoding_for_model(self.token_model))
        return self._prompt_tokens

    @property
    def turns(self) -> int:
        messages = self.body.get("messages")
        if not isinstance(messages, list):
            return 0
        return sum(1 for message in messages if isinstance(message, dict) and message.get("role") == "user")

    @property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools")) or bool(self.body.get("functions"))

    @property
    def has_images(self) -> bool:
        messages = self.body.get("messages")
        if not isinstance(messages, list):
            return False
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in _IMAGE_PARTS for part in content
            ):
                return True
        return False

    @property
    def asks_for_json(self) -> bool:
        response_format = self.body.get("response_format")
        return isinstance(response_format, dict) and response_format.get("type", "text") != "text"


# Around an English keyword: no ASCII letter or digit ("why" is not in "whyever", but is in
# "请问why我的订单": Unicode's \b would see no word boundary between Chinese and Latin letters).
_NOT_AFTER = r"(?<![A-Za-z0-9])"
_NOT_BEFORE = r"(?![A-Za-z0-9])"


def _keyword_pattern(keywords: list[str]) -> re.Pattern[str]:
    """One expression for all of a class's keywords, ignoring case. An ASCII keyword matches as a
    whole word; Chinese text has no spaces between words, so any other matches wherever it is."""
    parts = []
    for keyword in sorted(keywords, key=len, reverse=True):
        escaped = re.escape(keyword)
        if keyword.isascii():
            escaped = (
                (_NOT_AFTER if keyword[0].isalnum() else "") + escaped + (_NOT_BEFORE if keyword[-1].isalnum() else "")
            )
        parts.append(escaped)
    return re.compile("|".join(parts), re.IGNORECASE)


Check = Callable[[RequestFacts], str | None]


class ClassRules:
    """One class's rules: ``match`` gives what matched (None: some rule does not hold). Cheap
    checks (who asks, what the body holds) run before the words and, last, the prompt's tokens."""

    def __init__(self, rules: RouteRules) -> None:
        checks: list[Check] = []
        if rules.tiers:
            tiers = frozenset(rules.tiers)
            checks.append(lambda facts: "tier" if facts.principal.tier in tiers else None)
        if rules.keys:
            keys = frozenset(rules.keys)
            checks.append(lambda facts: "key" if facts.principal.key_id in keys else None)
        for name, wanted, read in (
            ("tools", rules.tools, lambda facts: facts.has_tools),
            ("images", rules.images, lambda facts: facts.has_images),
            ("response_format", rules.response_format, lambda facts: facts.asks_for_json),
        ):
            if wanted is not None:
                checks.append(_presence(name, wanted, read))
        if rules.min_turns is not None or rules.max_turns is not None:
            checks.append(_bounds("turns", rules.min_turns, rules.max_turns, lambda facts: facts.turns))
        if rules.keywords:
            keywords = _keyword_pattern(rules.keywords)
            checks.append(lambda facts: _found("keywords", keywords, facts.text))
        if rules.regex:
            patterns = [re.compile(pattern) for pattern in rules.regex]
            checks.append(lambda facts: next(filter(None, (_found("regex", p, facts.text) for p in patterns)), None))
        if rules.min_prompt_tokens is not None or rules.max_prompt_tokens is not None:
            checks.append(
                _bounds("prompt_tokens", rules.min_prompt_tokens, rules.max_prompt_tokens, lambda f: f.prompt_tokens)
            )
        self._checks = checks

    def match(self, facts: RequestFacts) -> list[str] | None:
        """What each rule found (e.g. ``keywords 'why'``, ``prompt_tokens 120 <= 300``), or None
        when one does not hold; each starts with the rule's name."""
        found = []
        for check in self._checks:
            what = check(facts)
            if what is None:
                return None
            found.append(what)
        return found


def _presence(name: str, wanted: bool, read: Callable[[RequestFacts], bool]) -> Check:
    return lambda facts: (name if wanted else f"{name}=false") if read(facts) is wanted else None


def _bounds(name: str, low: int | None, high: int | None, read: Callable[[RequestFacts], int]) -> Check:
    def check(facts: RequestFacts) -> str | None:
        value = read(facts)
        if (low is not None and value < low) or (high is not None and value > high):
            return None
        return (
            f"{name} {value}" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
        )

    return check


def _found(name: str, pattern: re.Pattern[str], text: str) -> str | None:
    matched = pattern.search(text)
    return f"{name} {matched.group(0)!r}" if matched is not None else None
