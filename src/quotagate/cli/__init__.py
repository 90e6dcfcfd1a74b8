"""The command line: serve, keys, mock-upstream, config check."""

from ._main import app, main

__all__ = ["app", "main"]
