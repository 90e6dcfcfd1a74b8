"""The ASGI server: routing, body limits, OpenAI-shaped errors, the proxy and admin endpoints."""

from ._app import Gateway

__all__ = ["Gateway"]
