"""When a probe proves that the tenant's reverse proxy strips ``Authorization``: pure.

With ``token_placement: auto``, a fresh token refused in the header is tried once more as
the ``access_token`` query parameter (the probe, proxy.py). Learning the query placement
switches every later request of every client to it, and puts the token where the tenant
can echo it back (a login redirect's ``ReturnUrl=``). So the evidence must be strong:

- one probe proves something only when the header got 401 and the query a 2xx: a redirect
  (the usual forms-auth answer to an unauthenticated request) or an error proves nothing;
- one path proves nothing about the tenant as a whole: a single odd endpoint, or one
  client, must not switch everyone. The same evidence on two different paths does.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from .access import normalize_path
from .exceptions import BadPath

SHOWN_PATH = 200  # characters of a path a warning shows


@dataclass(frozen=True)
class Probe:
    """What one probe saw. `path` is the path alone (normalized), never the query."""

    path: str
    header_status: int  # the fresh token in the Authorization header
    query_status: int  # the same token as the access_token query parameter

    @property
    def proves(self) -> bool:
        return self.header_status == 401 and 200 <= self.query_status < 300

    def __str__(self) -> str:
        shown = quote(self.path[:SHOWN_PATH], safe="/")  # printable ASCII in a log line
        return (f"{shown}: {self.header_status} with the header, "
                f"{self.query_status} in the query")


def weigh(seen: tuple[Probe, ...], probe: Probe) -> tuple[tuple[Probe, ...], bool]:
    """The evidence kept after `probe` (probes that proved something, one per path, at most
    two), and whether it now proves the query placement: two different paths."""
    if not probe.proves or any(earlier.path == probe.path for earlier in seen):
        return seen, False
    kept = (*seen, probe)[-2:]
    return kept, len(kept) >= 2


def path_key(path: str) -> str:
    """The path as the tenant (IIS) reads it: ``/a``, ``/A/`` and ``/%61`` are one path."""
    try:
        return normalize_path(path).lower()
    except BadPath:  # admitted paths are normalizable; the raw bytes otherwise
        return path
