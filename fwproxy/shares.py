"""``limits.max_concurrent_per_client``: how many requests one client may have in flight.

A client is its API key's name when it sent one, else its address. A client at its share
gets 503 at once, never a place in the ``max_concurrent`` queue: otherwise one client
holding every slot with requests it trickles (each byte just inside
``limits.client_body_timeout``) would keep everyone else waiting. Counted per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Shares:
    """Requests in flight per client, against a share (0: none)."""

    def __init__(self, share: int = 0) -> None:
        self.share = share
        self._held: dict[str, int] = {}

    @contextmanager
    def hold(self, client: str) -> Iterator[bool]:
        """Count a request of `client` while the block runs; yields False (counting
        nothing) when the client already holds its share."""
        held = self._held.get(client, 0)
        if held >= self.share:
            yield False
            return
        self._held[client] = held + 1
        try:
            yield True
        finally:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]

    def held(self, client: str) -> int:
        return self._held.get(client, 0)
