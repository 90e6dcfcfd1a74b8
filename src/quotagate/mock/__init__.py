"""A fast OpenAI-compatible mock provider with fault injection, for demos, tests and benchmarks."""

from ._app import WORDS, MockOptions, MockUpstream

__all__ = ["WORDS", "MockOptions", "MockUpstream"]
