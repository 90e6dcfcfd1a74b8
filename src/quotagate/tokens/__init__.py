"""Token counting with the models' real tokenizers, offline."""

from ._counting import (
    count_chat_tokens,
    count_prompt_input,
    count_text,
    encoding_for_model,
    encoding_name_for_model,
)
from ._encodings import ENCODING_NAMES, get_encoding

__all__ = [
    "ENCODING_NAMES",
    "count_chat_tokens",
    "count_prompt_input",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
]
