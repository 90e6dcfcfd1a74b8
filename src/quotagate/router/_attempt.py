"""One attempt at one deployment: the deployment's answer (``Exchange``), or what failed.

The attempt sends the request and reads as much of the answer as decides whether it served: the
head, then the first chunk of an event stream or the whole of any other answer, so that a
deployment that breaks before the client has had anything can still be retried elsewhere. A
failure comes back as a ``Failure``: whether another try may help, how long to wait first, and
whose failure it is (the deployment's, counted at once; or perhaps the request's, held as a
suspect: see _blame). A provider that says it has nothing left of a limit cools its deployment
down until the limit resets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import GatewayError, UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from ..limits import NOTHING, Reservation
from ..upstream import DeploymentTarget, Transport, UpstreamRequest, UpstreamResponse, upstream_status_error
from ..upstream._http import ConnectFailed, ConnectTimeout, ResponseTooLarge
from ._blame import Suspect
from ._provider_headers import exhausted_resets, reset_wait, retry_after
from ._request import RouteRequest
from ._state import DeploymentStates
from ._stats import DeploymentStats

_NOT_RETRYABLE = {400, 401, 403, 404, 413, 422}
# The upstream clients' errors of a connection that was never made (the request was not sent).
_CONNECT_ERRORS = (ConnectFailed, ConnectTimeout)


def _never_sent(exc: BaseException) -> bool:
    """The request failed before it reached the deployment (no connection): not the request's."""
    cause = exc.__cause__
    if isinstance(cause, _CONNECT_ERRORS):
        return True
    # aiohttp's (by name: importing aiohttp only for this would load it where it is unused).
    return cause is not None and any(
        kind.__name__ == "ClientConnectorError" and kind.__module__.startswith("aiohttp")
        for kind in type(cause).__mro__
    )


@dataclass(slots=True)
class Exchange:
    """A deployment that answered: its response head, and for event streams the first chunk;
    any other answer has been read whole (``response.read()`` returns it at once), but for a
    request that is ``unbuffered`` one that is neither JSON nor text, whose first chunk is here
    and the rest in ``response.iter_chunks()``."""

    target: DeploymentTarget
    response: UpstreamResponse
    reservation: Reservation | None  # what the request holds on the deployment's provider limits
    started: float
    streamed: bool  # an event stream, relayed event by event (asked for, and answered as one)
    first_chunk: bytes = b""
    attempts: int = 1
    tried: list[str] | None = None  # deployment ids tried, in order


class Failure(NamedTuple):
    """An attempt that did not serve the request."""

    error: GatewayError  # what the client gets if nothing else serves it
    retryable: bool  # whether another try (here or elsewhere) may help
    wait: float | None  # how long to wait before trying it again, as the provider said (a 429's)
    suspect: Suspect | None  # the failure, when it may be the request's rather than the deployment's
    # The deployment's API cannot take the request (never sent): another deployment's may.
    unservable: bool = False
    status: int | None = None  # the deployment's HTTP status, where it answered with one


class Attempts:
    """Attempts at the deployments of one router, over its transport."""

    def __init__(
        self,
        transport: Transport,
        states: DeploymentStates,
        stats: Mapping[str, DeploymentStats],
        secrets: tuple[str, ...],
        default_cooldown: float,
    ) -> None:
        self._transport = transport
        self._states = states
        self._stats = stats
        self._secrets = secrets
        self._default_cooldown = default_cooldown

    async def run(
        self, target: DeploymentTarget, reservation: Reservation | None, request: RouteRequest
    ) -> Exchange | Failure:
        """Send ``request`` to ``target``, which admitted it with ``reservation`` on its provider
        limits (given back when the deployment takes nothing)."""
        bodies = request.bodies
        try:
            # The deployment's endpoint and body: another API's, translated, where it speaks one.
            path = bodies.path_for(target, request.path)
            body = bodies.for_target(target)
        except GatewayError as exc:  # a request this deployment's API cannot take
            await _give_back(reservation)
            return Failure(exc, False, None, None, unservable=True)
        stats = self._stats[target.id]
        stats.began()
        started = time.monotonic()
        response: UpstreamResponse | None = None
        try:
            response = await self._transport.send(
                UpstreamRequest(
                    target.url(path),
                    bodies.headers_for(target),
                    body,
                    target.connect_timeout,
                    target.first_byte_timeout,
                    target.chunk_timeout,
                    target.label,
                    target.proxy,
                    request.method,
                    request.content_type,
                )
            )
            if response.status >= 300:
                return await self._refused(target, reservation, response, stats, started)
            first = b""
            if request.stream:
                # Read the first chunk before the client gets anything: a deployment that breaks
                # now can still be retried elsewhere.
                iterator = response.iter_chunks().__aiter__()
                first = await anext(iterator, b"")
                response = _Prefetched(response, iterator)
            content_type = response.headers.get("content-type", "")
            streamed = request.stream and content_type.startswith("text/event-stream")
            if not streamed and not (request.unbuffered and not _textual(content_type)):
                # An answer that is not an event stream is relayed once it is whole, so it is read
                # whole here: one that breaks off or stalls midway has sent the client nothing, and
                # another deployment may still serve the request (it was a 502 or a 504 at once).
                response = _Whole(response, first + await _read_whole(target, response, started))
                first = b""
            # Heed the provider's own view: no requests left means a cooldown until its reset.
            for reset in exhausted_resets(response.headers):
                stats.cooldown_reason = f"the provider's headers said none left; it resets in {reset:g} s"
                await self._states.cooldown(target.id, reset)
            return Exchange(target, response, reservation, started, streamed, first)
        except (UpstreamError, UpstreamTimeoutError) as exc:
            if isinstance(exc, UpstreamStatusError):
                raise
            if response is not None:
                response.close()
            await _give_back(reservation)
            if isinstance(exc.__cause__, ResponseTooLarge):
                # The request asked for more than the gateway holds: not the deployment's doing,
                # and any other would answer as much.
                stats.ended_without_verdict()
                return Failure(exc, False, None, None)
            if isinstance(exc, UpstreamTimeoutError) or _never_sent(exc) or response is not None:
                # Not answering, not being reached, or breaking off an answer it had begun
                # (its head had come): the deployment's failure.
                await self._states.failure(target.id)
                stats.ended(failed=True)
                return Failure(exc, True, None, None)
            # The deployment had the request and closed the connection without a word: perhaps
            # because of the request.
            stats.ended_without_verdict()
            return Failure(exc, True, None, Suspect(target, started, "dropped"))
        except BaseException:
            if response is not None:
                response.close()
            await _give_back(reservation)
            stats.ended_without_verdict()
            raise

    async def _refused(
        self,
        target: DeploymentTarget,
        reservation: Reservation | None,
        response: UpstreamResponse,
        stats: DeploymentStats,
        started: float,
    ) -> Failure:
        """An answer with an error status (or a redirect, which the gateway does not follow)."""
        body = await response.read()
        error = upstream_status_error(response.status, body, response.headers, target.label, self._secrets)
        await _give_back(reservation)
        status = response.status
        if status == 429:
            wait = retry_after(response.headers) or reset_wait(response.headers)
            stats.cooldown_reason = (
                f"429 from the provider, asking to wait {wait:g} s" if wait else "429 from the provider (no wait named)"
            )
            await self._states.cooldown(target.id, wait or self._default_cooldown)
            stats.ended(failed=False)
            return Failure(error, True, wait, None, status=status)
        if status in _NOT_RETRYABLE or status < 500:
            stats.answered_at = time.monotonic()
            stats.ended(failed=False)
            return Failure(error, False, None, None, status=status)
        if status != 500:
            # 502, 503, 504, 529, ...: the provider is down or overloaded, whatever it was asked.
            await self._states.failure(target.id)
            stats.ended(failed=True)
            return Failure(error, True, None, None, status=status)
        # A 500: for a good request the deployment's, but some inputs crash providers.
        stats.ended_without_verdict()
        return Failure(error, True, None, Suspect(target, started, "status 500"), status=status)


async def _read_whole(target: DeploymentTarget, response: UpstreamResponse, started: float) -> bytes:
    """The rest of the body, within the deployment's total timeout counted from ``started``."""
    total = target.total_timeout
    if total is None:
        return await response.read()
    try:
        async with asyncio.timeout(max(0.001, started + total - time.monotonic())):
            return await response.read()
    except TimeoutError:
        raise UpstreamTimeoutError(f"Upstream {target.label} exceeded its total timeout of {total:g}s.") from None


async def _give_back(reservation: Reservation | None) -> None:
    # The provider took nothing: its token estimate is refunded (the request still counted).
    if reservation is not None:
        await reservation.settle(NOTHING)


class _Whole:
    """A response whose body was read whole during its attempt."""

    def __init__(self, response: UpstreamResponse, body: bytes) -> None:
        self._response = response
        self._body = body
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self):  # type: ignore[no-untyped-def]
        if self._body:
            yield self._body

    def close(self) -> None:
        self._response.close()


def _textual(content_type: str) -> bool:
    """Whether an answer is JSON or text (which the gateway reads: usage, secrets to scrub)."""
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or kind.startswith("text/")


class _Prefetched:
    """A streamed response whose first chunk was already read."""

    def __init__(self, response: UpstreamResponse, iterator: object) -> None:
        self._response = response
        self._iterator = iterator
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    async def iter_chunks(self):  # type: ignore[no-untyped-def]
        async for chunk in self._iterator:  # type: ignore[attr-defined]
            yield chunk

    def close(self) -> None:
        self._response.close()
