"""Local tokens at the door: admission's side (find, verify, strip) and the endpoint's I/O.

Theory of operation
-------------------
With ``local_tokens.enabled`` the guard holds a `Gate`. A request that brings
``Authorization: Bearer fwpl_...`` (or an ``access_token=fwpl_...`` query parameter) is
verified here (localtokens.verify, against the live API keys): refused, it gets 401
``invalid_token`` from fwproxy and never reaches the tenant; valid, it is admitted with its
key's rights, and the proxy removes the local token and puts fwproxy's real one in its
place. A request for the path of ``auth.token_url`` is answered by `answer_token_request`
(tokenendpoint.py decides, this module reads the body and signs).

Only a request that carries ``Authorization`` or a query string pays anything here: a
bearer that does not start with the prefix, or a query without it, is a foreign credential.
`Counts` is what metrics and the status page show: how many were issued, how many refused
and why (a closed set: `REFUSALS`), never a token.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote_plus

from aiohttp import web
from multidict import CIMultiDictProxy

from .answers import error_response
from .exceptions import ConfigError
from .keys import HEADER as KEY_HEADER
from .localtokens import (
    PREFIX,
    Holder,
    Refused,
    Signed,
    SigningKeys,
    StaticKeys,
    derived_signing_keys,
    file_signing_keys,
    holds,
    issue,
    signed,
)
from .tokenendpoint import (
    MAX_BODY,
    Answer,
    OAuthError,
    authenticate,
    invalid_token_response,
    parse_token_request,
    token_response,
)
from .upstream import has_param

if TYPE_CHECKING:
    from .config import Settings
    from .keys import ApiKey, KeyStore
    from .localtokens import Claims

# Why a local token, or a request for one, was refused: metrics labels, a closed set.
REFUSALS = ("malformed", "bad_signature", "expired", "not_yet_valid", "revoked",
            "invalid_request", "invalid_client", "unsupported_grant_type")
QUERY_NAME = "access_token"
MEMO_SIZE = 1024  # tokens whose signature check a gate keeps


def fleet_signing_keys(settings: Settings) -> StaticKeys | None:
    """With ``state.backend: redis``: the key every instance derives alike from the fleet's
    key material (localtokens.derived_signing_keys), so a local token from any instance is
    good at all of them, with no Redis call (Redis away or not). None otherwise."""
    if not settings.state.shared:
        return None
    from .fleet import fleet_scope, key_material  # (redis-py: only for a fleet)

    material = key_material(settings)
    if material is None:
        return None
    return derived_signing_keys(material, f"{settings.state.key_prefix}:{fleet_scope(settings)}")


def signing_keys(settings: Settings, fleet: SigningKeys | None = None) -> SigningKeys | None:
    """The keys local tokens are signed with, or None when local tokens are off. A fleet's
    are derived (`fleet`: the ones derived at start, which a reload keeps, as the fleet's
    sealing key is kept: rotating the client secret changes them at the next restart); a
    single machine's are in the state directory's file, shared by its workers."""
    if not settings.local_tokens.enabled:
        return None
    if settings.state.shared:
        return fleet if fleet is not None else fleet_signing_keys(settings)
    if settings.local_token_key is None:
        raise ConfigError("local_tokens.enabled", "no state directory for the signing key")
    return file_signing_keys(settings.local_token_key, "local_tokens.enabled")


class Counts:
    """Local tokens issued and refused (by reason), since the process started."""

    __slots__ = ("issued", "refused")

    def __init__(self) -> None:
        self.issued = 0
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)

    def refuse(self, reason: str) -> None:
        self.refused[reason if reason in self.refused else "invalid_request"] += 1


class Gate:
    """Issues and verifies local tokens for one guard (rebuilt on reload with the same
    signing key: `signing_keys`, so tokens issued before stay good)."""

    def __init__(self, signing: SigningKeys, lifetime: float, keys: KeyStore | None,
                 counts: Counts) -> None:
        self._signing = signing
        self._lifetime = lifetime
        self._keys = keys
        self.counts = counts
        self._vouched: dict[str, Signed] = {}  # token: what its signature vouches for

    def _holder(self, name: str) -> Holder | None:
        if self._keys is None:
            return Holder.open(name)
        key = self._keys.by_name(name)
        return None if key is None else Holder.of_key(key)

    def check(self, token: str) -> Claims | web.Response:
        """The claims of a local token, or fwproxy's 401 invalid_token. What the signature
        vouches for is kept for the tokens seen (the gate's keys are read once: a reload
        makes a new gate); the time and the live key store are asked every time."""
        vouched: Signed | Refused | None = self._vouched.get(token)
        if vouched is None:
            vouched = signed(self._signing, token)
            if isinstance(vouched, Signed):  # (only this proxy can make one: no flood)
                if len(self._vouched) >= MEMO_SIZE:
                    self._vouched.clear()
                self._vouched[token] = vouched
        verdict = vouched if isinstance(vouched, Refused) else holds(
            vouched, time.time(), self._holder)
        if isinstance(verdict, Refused):
            self.counts.refuse(verdict.reason)
            return _response(invalid_token_response(verdict))
        return verdict

    async def answer(self, request: web.Request, query: str, body_timeout: float
                     ) -> web.Response:
        """The token endpoint: a client credentials request read and answered here."""
        body = b""
        if request.method == "POST" and request.body_exists:
            try:
                body = await asyncio.wait_for(_read_at_most(request, MAX_BODY + 1),
                                              body_timeout or None)
            except asyncio.TimeoutError:
                self.counts.refuse("invalid_request")
                return await _send_and_close(request, _response(OAuthError(
                    408, "invalid_request", "the request body did not arrive").answer()))
        parsed = parse_token_request(request.method, request.headers.get("Content-Type"),
                                     body, request.headers.get("Authorization"), query=query)
        if not isinstance(parsed, OAuthError):
            find = self._keys.find if self._keys is not None else None
            holder = authenticate(parsed, find)
            if isinstance(holder, Holder):
                self.counts.issued += 1
                token = issue(self._signing.current(), holder, time.time(), self._lifetime)
                return _response(token_response(token, self._lifetime))
            parsed = holder
        self.counts.refuse(parsed.error)
        response = _response(parsed.answer())
        return await _send_and_close(request, response) if len(body) > MAX_BODY else response


def bearer(authorization: str) -> str | None:
    """The local token in an Authorization value, or None (another scheme or credential).
    Read as leniently as any server would (the scheme in any case, any white space after
    it, the prefix in any case), so what looks like a local token to the tenant is judged
    here; a wrong-case prefix is then refused as malformed, never forwarded."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if "\t" in scheme:
        scheme, _, rest = scheme.partition("\t")
        credentials = rest + credentials
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or credentials[:len(PREFIX)].lower() != PREFIX:
        return None
    return credentials


def in_query(query: str) -> tuple[str | None, str]:
    """(the local token among the ``access_token`` parameters, the query without them).
    Names are matched decoded, as the tenant reads them (``access%5Ftoken`` too). None, and
    the query untouched, when no such parameter holds a local token; a local token beside
    any other ``access_token`` gives "" (refused as malformed: which one counts?)."""
    found: list[str] = []
    kept: list[str] = []
    stray = False  # a local token under another name: it would reach the tenant
    for part in query.split("&"):
        name, _, value = part.partition("=")
        decoded = unquote_plus(value)
        if unquote_plus(name) == QUERY_NAME:
            found.append(decoded)
        else:
            kept.append(part)
            stray = stray or decoded[:len(PREFIX)].lower() == PREFIX
    local = [value for value in found if value[:len(PREFIX)].lower() == PREFIX]
    if stray:
        return "", query
    if not local:
        return None, query
    return (local[0] if len(found) == 1 else ""), "&".join(kept)


def may_hold_local(query: str) -> bool:
    """Whether `in_query` must look: the prefix in any case, or any escape that could
    spell it (a cheap test for every query while local tokens are on)."""
    return "%" in query or PREFIX in query.lower()


def brings_own(authorization: str | None, query: str) -> bool:
    """A credential of the client's own (a FotoWeb preview token, say): with
    ``client_authorization: keep`` it is forwarded untouched and fwproxy lends nothing."""
    return authorization is not None or has_param(query, QUERY_NAME)


class Passed(NamedTuple):
    """What a request's credentials earn it (with local tokens on)."""

    key: ApiKey | None
    read_only: bool  # a local token's key is read-only
    own_token: bool  # fwproxy's token goes in
    drop_authorization: bool  # a local token in the header: not forwarded
    query: str  # without a local token's access_token parameter


def admit_credentials(gate: Gate, keys: KeyStore | None, keep: bool,
                      authorization: str | None, query: str,
                      headers: CIMultiDictProxy[str]) -> Passed | web.Response:
    """A local token (header or query: verified, to be replaced), else a credential of
    the client's own (with ``keep``: forwarded untouched, no API key needed: it borrows
    nothing), else the API key, when keys are configured."""
    if authorization is not None and len(headers.getall("Authorization", ())) > 1:
        return error_response(400, "invalid_request", "more than one Authorization header")
    token = bearer(authorization) if authorization is not None else None
    drop = token is not None
    if query and may_hold_local(query):
        in_q, query = in_query(query)
        if in_q is not None:  # a local token and another credential: which counts? malformed
            token = "" if authorization is not None else in_q
    if token is not None:
        claims = gate.check(token)
        if isinstance(claims, web.Response):
            return claims
        return Passed(claims.holder.key, claims.read_only, True, drop, query)
    if keep and brings_own(authorization, query):
        return Passed(None, False, False, False, query)
    key = None
    if keys is not None:
        key = keys.find(headers.get(KEY_HEADER))
        if key is None:
            return key_required()
    return Passed(key, False, True, False, query)


def key_required() -> web.Response:
    return error_response(401, "api_key_required",
                          f"send a valid API key in the {KEY_HEADER} header")


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body)


async def _send_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection without reading on: the body was not
    read to its end (aiohttp would otherwise linger, reading what is left of it)."""
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass
    request.protocol.force_close()
    return response
