"""The operator console: a web UI at /ui over the admin API, served from this package's files."""

from ._console import Console

__all__ = ["Console"]
