"""``limits.max_concurrent`` and ``limits.max_concurrent_per_client``: the client side's
slots, how many requests fwproxy serves at once, in all and per client.

A client is its API key's name when it sent one, else its address. A request waits in
line for one of ``max_concurrent`` slots for up to ``limits.queue_timeout`` (0: not at all),
then gets 503 busy. A client at its share gets 503 at once, never a place in that line:
otherwise one client holding every slot with requests it trickles (each byte just inside
``limits.client_body_timeout``) would keep everyone else waiting. Counted per process.

The one semaphore acquired is the one released, even when a reload replaces it meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .config import LimitsConfig

BUSY = "limits.max_concurrent requests are in flight; try again"
OVER_SHARE = "limits.max_concurrent_per_client requests of this client are in flight; try again"


class Slots:
    """Requests in flight, in all and per client; neither limit set: `configured` is False
    and the handler skips this stage."""

    def __init__(self) -> None:
        self.share = 0
        self._limit = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._queue_timeout = 0.0
        self._held: dict[str, int] = {}

    @property
    def configured(self) -> bool:
        return self._semaphore is not None or self.share > 0

    def configure(self, limits: LimitsConfig) -> None:
        if limits.max_concurrent != self._limit:
            self._limit = limits.max_concurrent
            self._semaphore = asyncio.Semaphore(self._limit) if self._limit else None
        self._queue_timeout = limits.queue_timeout
        self.share = limits.max_concurrent_per_client

    def held(self, client: str) -> int:
        return self._held.get(client, 0)

    @asynccontextmanager
    async def hold(self, client: str) -> AsyncIterator[str]:
        """A slot for a request of `client` while the block runs; yields "" when it got
        one, else why not (and holds nothing)."""
        held = self._held.get(client, 0)
        if self.share and held >= self.share:
            yield OVER_SHARE
            return
        self._held[client] = held + 1
        try:
            semaphore = self._semaphore
            if semaphore is None:
                yield ""
                return
            if semaphore.locked() and self._queue_timeout <= 0:
                yield BUSY
                return
            try:
                await asyncio.wait_for(semaphore.acquire(), self._queue_timeout or None)
            except asyncio.TimeoutError:
                yield BUSY
                return
            try:
                yield ""
            finally:
                semaphore.release()
        finally:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]
