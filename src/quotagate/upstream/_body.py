"""What each deployment is sent for one request.

The client's bytes as they came, unless a deployment needs a change: its own name for the model,
or a usage chunk at the end of a stream that the gateway needs to settle the request's tokens
(the client, which did not ask for it, will not see it). Each body is made once per deployment.
"""

from __future__ import annotations

from typing import Any

import orjson

from ._deployments import DeploymentTarget


class UpstreamBodies:
    """The bodies of one request (``body``, parsed from ``raw``) for the deployments it tries;
    ``counts_tokens``: whether the gateway needs a stream's usage."""

    __slots__ = ("_counts_tokens", "_made", "_model", "_stream", "body", "raw")

    def __init__(self, body: dict[str, Any], raw: bytes, model: str, stream: bool, counts_tokens: bool) -> None:
        self.body = body
        self.raw = raw
        self._model = model
        self._stream = stream
        self._counts_tokens = counts_tokens
        self._made: dict[str, tuple[bytes, bool]] = {}

    def for_target(self, target: DeploymentTarget) -> bytes:
        made = self._made.get(target.id)
        if made is None:
            made = self._made[target.id] = self._make(target)
        return made[0]

    def asked_for_usage(self, target: DeploymentTarget) -> bool:
        """Whether the body sent to ``target`` asked for a usage chunk the client did not."""
        made = self._made.get(target.id)
        return made is not None and made[1]

    def _make(self, target: DeploymentTarget) -> tuple[bytes, bool]:
        changes: dict[str, Any] = {}
        if target.provider_model != self._model:
            changes["model"] = target.provider_model
        ask = False
        if self._stream and self._counts_tokens and target.stream_usage:
            options = self.body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                ask = True
                changes["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return (orjson.dumps({**self.body, **changes}) if changes else self.raw), ask
