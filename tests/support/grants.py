"""A grant for tests that keeps nothing: no stored token, never news, settings ignored.
A test's fake grant subclasses it and writes only `name`, `cache_key` and `fetch`."""

from __future__ import annotations

from fwproxy.config import AuthConfig
from fwproxy.tokens import Token


class GrantStub:
    def stored(self) -> Token | None:
        return None

    def has_news(self) -> bool:
        return False

    def update(self, auth: AuthConfig) -> None:
        pass
