"""The rules classifier on its own: what each rule reads of a request, and which class wins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quotagate.auth import Principal
from quotagate.config import RouteRules, parse_config
from quotagate.tiering import ClassRules, RequestFacts, RoutePlanner, last_user_text

ASKER = Principal(key_id="k1", user="alice", tier="free", models=None)


def facts(content: Any, **body: Any) -> RequestFacts:
    messages = body.pop("messages", [{"role": "user", "content": content}])
    return RequestFacts({"model": "auto", "messages": messages, **body}, ASKER, "gpt-4o-mini")


def matches(rules: dict[str, Any], content: Any = "Where is my parcel?", **body: Any) -> list[str] | None:
    return ClassRules(RouteRules(**rules)).match(facts(content, **body))


def test_keywords_match_whole_words_ignoring_case_and_chinese_anywhere() -> None:
    """An English keyword is a whole word in any case; a Chinese one matches inside a sentence."""
    assert matches({"keywords": ["why"]}, "WHY was it cancelled?") == ["keywords 'WHY'"]
    assert matches({"keywords": ["why"]}, "Whyever not?") is None
    assert matches({"keywords": ["why"]}, "请问why我的订单被取消了") == ["keywords 'why'"]
    assert matches({"keywords": ["为什么"]}, "请问为什么订单被取消了") == ["keywords '为什么'"]
    assert matches({"keywords": ["refund policy"]}, "what is your Refund  policy") is None  # words as written


def test_text_rules_read_the_last_user_message_only() -> None:
    """A keyword in the system prompt or an earlier turn does not classify the question asked now."""
    messages = [
        {"role": "system", "content": "Explain why when asked."},
        {"role": "user", "content": "why is the sky blue"},
        {"role": "assistant", "content": "Because..."},
        {"role": "user", "content": [{"type": "text", "text": "and the sea?"}]},
    ]
    assert matches({"keywords": ["why"]}, None, messages=messages) is None
    assert last_user_text({"messages": messages}) == "and the sea?"


def test_every_rule_set_must_hold() -> None:
    """Rules combine with and: one that does not hold leaves the class out."""
    assert matches({"keywords": ["parcel"], "max_prompt_tokens": 100}) is not None
    assert matches({"keywords": ["parcel"], "tools": True}) is None


@pytest.mark.parametrize(
    ("rules", "body", "expected"),
    [
        ({"tools": True}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, ["tools"]),
        ({"tools": False}, {}, ["tools=false"]),
        ({"response_format": True}, {"response_format": {"type": "json_object"}}, ["response_format"]),
        ({"response_format": True}, {"response_format": {"type": "text"}}, None),
        ({"tiers": ["free", "paid"]}, {}, ["tier"]),
        ({"keys": ["k2"]}, {}, None),
        ({"regex": [r"#\d{5}"]}, {}, None),
    ],
)
def test_what_each_rule_reads(rules: dict[str, Any], body: dict[str, Any], expected: list[str] | None) -> None:
    """Tools, JSON mode, the tier and key asking, and regular expressions each read their part."""
    assert matches(rules, **body) == expected


def test_images_turns_regex_and_prompt_tokens() -> None:
    """An image part, the number of user turns, a pattern and the prompt's size are rules too."""
    picture = [{"type": "text", "text": "Is this damaged?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert matches({"images": True}, picture) == ["images"]
    assert matches({"images": True}) is None
    three_turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2 + [
        {"role": "user", "content": "c"}
    ]
    assert matches({"min_turns": 3}, None, messages=three_turns) == ["turns 3 >= 3"]
    assert matches({"regex": [r"#\d{5}"]}, "Order #48213 is late") == ["regex '#48213'"]
    assert matches({"max_prompt_tokens": 300}, "short") is not None
    assert matches({"min_prompt_tokens": 300}, "short") is None
    assert matches({"min_prompt_tokens": 300}, "word " * 400) is not None


def test_the_strongest_class_whose_rules_hold_wins() -> None:
    """Where two classes' rules hold, the request gets the stronger (later) class."""
    config = parse_config(
        {
            "models": [
                *[
                    {"name": name, "deployments": [{"provider": "openai-compatible", "base_url": "http://127.0.0.1:9"}]}
                    for name in ("cheap", "strong")
                ],
                {
                    "name": "auto",
                    "route": {
                        "classes": [
                            {"name": "simple", "model": "cheap", "rules": {"max_prompt_tokens": 300}},
                            {"name": "complex", "model": "strong", "rules": {"keywords": ["why"]}},
                        ]
                    },
                },
            ]
        }
    )
    planner = RoutePlanner(config)

    def plan(text: str) -> tuple[str, str, tuple[str, ...], str]:
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        found = asyncio.run(planner.plan("auto", body, ASKER))
        return found.route_class, found.model, found.models, found.reason

    assert plan("why so slow?") == ("complex", "strong", ("strong",), "rule: keywords")
    assert plan("how slow?") == ("simple", "cheap", ("cheap", "strong"), "rule: prompt_tokens")
    # No rule holds and no examples: the default, which is the strongest class unless named.
    assert plan("how slow? " * 200)[:2] == ("complex", "strong")
