"""What each deployment is sent for one request.

The client's bytes as they came, unless a deployment needs a change: its own name for the model,
a usage chunk at the end of a stream that the gateway needs to settle the request's tokens (the
client, which did not ask for it, will not see it), or another API's form of the request (a chat
request to a deployment that speaks Anthropic's Messages API, and a Messages request to one that
speaks OpenAI's). Each body is made once per deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import InvalidRequestError
from ..surfaces import chat_to_messages
from ._deployments import DeploymentTarget

# The endpoints of each API that a request of the other can be translated to.
_MESSAGES_PATH = "/messages"
_CHAT_PATH = "/chat/completions"
# The client's headers a Messages deployment is sent: the API version and beta features it asked for.
_CLIENT_HEADERS = frozenset(("anthropic-version", "anthropic-beta"))
# The providers whose chat takes max_completion_tokens (others know only max_tokens).
_MAX_COMPLETION_TOKENS = frozenset(("openai", "azure"))


class UpstreamBodies:
    """The bodies of one request (``body``, parsed from ``raw``) for the deployments it tries;
    ``counts_tokens``: whether the gateway needs a stream's usage."""

    __slots__ = ("_chat", "_counts_tokens", "_made", "_model", "_stream", "body", "raw")

    def __init__(
        self, body: dict[str, Any], raw: bytes, model: str, stream: bool, counts_tokens: bool, chat: bool = False
    ) -> None:
        self.body = body
        self.raw = raw
        self._model = model
        self._stream = stream
        self._counts_tokens = counts_tokens
        self._chat = chat  # a chat completions request: a Messages deployment can serve it, translated
        self._made: dict[str, tuple[bytes, bool]] = {}

    def path_for(self, target: DeploymentTarget, path: str) -> str:
        """The endpoint of ``target`` that serves this request (``path``: the client's)."""
        if target.api == "openai":
            return path
        if self._chat:
            return _MESSAGES_PATH
        raise InvalidRequestError(
            f"The model's deployment {target.label} speaks Anthropic's Messages API, which has no endpoint like {path}."
        )

    def headers_for(self, target: DeploymentTarget) -> Mapping[str, str]:
        """The headers ``target`` is sent: its own (its key, User-Agent)."""
        return target.headers

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
        if target.api == "anthropic":
            # Anthropic's streams always end with their usage: nothing to ask for.
            return orjson.dumps({**chat_to_messages(self.body), "model": target.provider_model}), False
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


class MessagesBodies(UpstreamBodies):
    """The bodies of an Anthropic Messages request: the client's bytes to a deployment that speaks
    the Messages API (with its own name for the model), and ``body``, the request as a chat
    completion (``messages_to_chat``), to one that speaks OpenAI's. The client's anthropic-version
    and anthropic-beta headers go to the Messages deployments."""

    __slots__ = ("_client_headers", "_messages", "_untranslatable")

    def __init__(
        self,
        messages: dict[str, Any],
        raw: bytes,
        chat: dict[str, Any],
        model: str,
        stream: bool,
        client_headers: Mapping[str, str],
        untranslatable: str | None = None,
    ) -> None:
        super().__init__(chat, raw, model, stream, True)
        self._messages = messages
        self._client_headers = client_headers
        # What of the request ``chat`` left out (see parse_messages): an OpenAI deployment refuses it.
        self._untranslatable = untranslatable

    def path_for(self, target: DeploymentTarget, path: str) -> str:
        return _MESSAGES_PATH if target.api == "anthropic" else _CHAT_PATH

    def headers_for(self, target: DeploymentTarget) -> Mapping[str, str]:
        if target.api != "anthropic" or not self._client_headers:
            return target.headers
        sent = {name: value for name, value in self._client_headers.items() if name in _CLIENT_HEADERS}
        return {**target.headers, **sent}

    def _make(self, target: DeploymentTarget) -> tuple[bytes, bool]:
        if target.api == "anthropic":
            turns = self._messages["messages"]
            if any(turn["role"] == "system" for turn in turns):
                # Claude Code's system turns (to a model whose name is not Claude's): Anthropic
                # refuses the role, so their text joins the system prompt.
                return orjson.dumps({**_hoisted_system(self._messages), "model": target.provider_model}), False
            if target.provider_model == self._model:
                return self.raw, False
            return orjson.dumps({**self._messages, "model": target.provider_model}), False
        if self._untranslatable is not None:
            raise InvalidRequestError(
                f"The request's {self._untranslatable} cannot be sent to deployment {target.label}, "
                "which speaks OpenAI's API; only Anthropic's Messages API has them."
            )
        chat = {**self.body, "model": target.provider_model}
        if target.provider in _MAX_COMPLETION_TOKENS and "max_tokens" in chat:
            # OpenAI's reasoning models (o-series, gpt-5) refuse max_tokens; all its models take this.
            chat["max_completion_tokens"] = chat.pop("max_tokens")
        if self._stream and not target.stream_usage:
            # A provider that refuses stream_options: the gateway counts the streamed text instead.
            chat.pop("stream_options", None)
        return orjson.dumps(chat), False


def _hoisted_system(messages: dict[str, Any]) -> dict[str, Any]:
    """A Messages request with its ``system`` turns moved to the end of its system prompt."""
    system = messages.get("system")
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) and system else list(system or [])
    turns = []
    for turn in messages["messages"]:
        if turn["role"] != "system":
            turns.append(turn)
            continue
        content = turn["content"]
        blocks.extend([{"type": "text", "text": content}] if isinstance(content, str) else content)
    return {**messages, "system": blocks, "messages": turns}
