"""An application endpoint as a handler: the call, its answer, and its protections.

`Endpoints` builds one `Endpoint` per ``handlers.http`` entry and registers it in the
bus's registry as an ordinary `Handler` (so priority order, outcomes, error policy,
middleware and metrics are the ones every handler has). An `Endpoint` is an
``async (event, ctx)`` callable; the outcome of its run follows from the answer:

- 2xx: ``ok``; its JSON directives (`bridge.webhooks.request`) emit follow-ups through
  ``ctx.emit``, then ``stop`` raises `StopChain` and ``skip`` raises `Skip`;
- 3xx (redirects are not followed), 4xx, an answer over ``max_response_bytes`` or
  malformed directives: ``error``, not retriable;
- 5xx, a refused or broken connection, no answer within ``timeout_s``, or an open
  circuit breaker: ``error``, retriable (`HttpHandlerError.retriable`, which
  ``on_error: reject`` turns into a retriable rejection).

The pipeline's own timeout for it is ``timeout_s`` plus `BACKSTOP_S`: the endpoint's
timeout fires first and says what happened; the pipeline's is only a backstop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from bridge.context import Context
from bridge.event import Event
from bridge.handlers import Handler, HandlerRegistry, Skip, StopChain
from bridge.redact import scrub
from bridge.webhookconfig import HttpHandlerConfig
from bridge.webhooks.breaker import Breaker
from bridge.webhooks.request import Answer, AnswerError, parse_answer, request_of

log = logging.getLogger("bridge.webhooks")

#: Added to an endpoint's ``timeout_s`` for the pipeline's timeout of its handler.
BACKSTOP_S: Final = 1.0
#: How much of a non-2xx answer's body goes into the error text.
_EXCERPT: Final = 200
_USER_AGENT: Final = "evbridge"


class HttpHandlerError(Exception):
    """An endpoint's failed call; ``retriable`` says whether trying again may help."""

    #: The pipeline logs it as one line: its traceback would only show this module.
    log_traceback = False

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class Endpoint:
    """One application endpoint: its connection pool, concurrency limit and breaker."""

    def __init__(self, config: HttpHandlerConfig, default_timeout_s: float) -> None:
        self.config = config
        self.timeout_s = config.timeout_s or default_timeout_s
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_s)
        self.url = config.url if config.url is not None else f"http://localhost{config.path}"
        #: Where it is sent, as errors and ``/readyz`` show it (a URL password masked).
        self.target = scrub(config.target)
        self._limit = asyncio.Semaphore(config.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._headers = dict(config.headers)

    def _open(self) -> aiohttp.ClientSession:
        # Built on first use: a session belongs to the running loop.
        config = self.config
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=config.socket, limit=config.max_concurrency)
            if config.socket is not None
            else aiohttp.TCPConnector(limit=config.max_concurrency)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"User-Agent": _USER_AGENT},
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __call__(self, event: Event, ctx: Context) -> None:
        refusal = self.breaker.refusal()
        if refusal is not None:
            raise HttpHandlerError(refusal, retriable=True)
        try:
            answer = await self._call(event)
        except HttpHandlerError as exc:
            if exc.retriable:
                self.breaker.failed(str(exc))
            else:
                self.breaker.succeeded()
            raise
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        for follow_up in answer.emit:
            ctx.emit(follow_up)
        if answer.stop:
            raise StopChain(answer.reason or "")
        if answer.skip:
            raise Skip(answer.reason or "")

    async def _call(self, event: Event) -> Answer:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(event)
        except TimeoutError:
            raise HttpHandlerError(
                f"{self.target} did not answer within {self.timeout_s:g}s", retriable=True
            ) from None

    async def _post(self, event: Event) -> Answer:
        headers, body = request_of(event, self._headers)
        try:
            async with self._limit:
                session = self._session or self._open()
                async with session.post(
                    self.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    return await self._answer(response)
        except aiohttp.ClientError as exc:
            raise HttpHandlerError(
                f"{self.target}: {type(exc).__name__}: {scrub(str(exc))}", retriable=True
            ) from None

    async def _answer(self, response: aiohttp.ClientResponse) -> Answer:
        status = response.status
        if 200 <= status < 300:
            payload = await self._read(response)
            try:
                return parse_answer(response.headers.get("Content-Type", ""), payload)
            except AnswerError as exc:
                raise HttpHandlerError(str(exc), retriable=False) from None
        excerpt = (await response.content.read(_EXCERPT)).decode("utf-8", "replace")
        said = f"{status} {response.reason or ''}".rstrip() + (f": {excerpt}" if excerpt else "")
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise HttpHandlerError(
                f"answered {status} to {location}: redirects are not followed", retriable=False
            )
        raise HttpHandlerError(f"answered {said}", retriable=status >= 500)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.config.max_response_bytes
        length = response.content_length
        too_long = f"answer is over max_response_bytes ({limit})"
        if length is not None and length > limit:
            raise HttpHandlerError(f"{too_long}: {length} bytes", retriable=False)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise HttpHandlerError(too_long, retriable=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def status(self) -> dict[str, Any]:
        """Its health for ``/readyz``: from the results of its calls (there is no probe)."""
        breaker = self.breaker
        state = breaker.state
        return {
            "target": self.target,
            "ok": state != "open",
            "state": state,
            "consecutive_failures": breaker.streak,
            "last_error": breaker.last_error,
            "required": self.config.required,
        }


class Endpoints:
    """The ``handlers.http`` endpoints of one bus, registered in its registry."""

    def __init__(
        self,
        configs: Sequence[HttpHandlerConfig],
        registry: HandlerRegistry,
        *,
        default_timeout_s: float,
    ) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        for config in configs:
            endpoint = Endpoint(config, default_timeout_s)
            registry.add(
                Handler(
                    endpoint,
                    config.match,
                    priority=config.priority,
                    timeout=endpoint.timeout_s + BACKSTOP_S,
                    name=config.name,
                    on_error=config.on_error,
                )
            )
            self.endpoints[config.name] = endpoint

    async def close(self) -> None:
        """Close every endpoint's connections."""
        await asyncio.gather(*(e.close() for e in self.endpoints.values()))

    def status(self) -> dict[str, dict[str, Any]]:
        """Each endpoint's health, by name."""
        return {name: e.status() for name, e in self.endpoints.items()}

    def not_ready(self) -> list[str]:
        """Why readiness fails: the ``required`` endpoints whose breaker is open."""
        return [
            f"handler {name}: circuit breaker open ({e.breaker.last_error})"
            for name, e in self.endpoints.items()
            if e.config.required and e.breaker.state == "open"
        ]
