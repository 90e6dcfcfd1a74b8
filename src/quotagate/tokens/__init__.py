"""Token counting with the models' real tokenizers, offline."""

from ._counting import (
    count_chat_tokens,
    count_prompt_input,
    count_text,
    encoding_for_model,
    encoding_name_for_model,
)
from ._encodings import ENCODING_NAMES, get_encoding
from ._estimate import (
    ZERO,
    Estimate,
    count_generated,
    estimate_tokens,
    generated_text,
    usage_details,
)

__all__ = [
    "ENCODING_NAMES",
    "ZERO",
    "Estimate",
    "count_chat_tokens",
    "count_generated",
    "count_prompt_input",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "estimate_tokens",
    "generated_text",
    "get_encoding",
    "usage_details",
]
