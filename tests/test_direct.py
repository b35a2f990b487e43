"""direct.py holds to `ClientSession.request`: a bodyless request sent the short way puts
the same bytes on the wire, reads the same answer, and fails with the same exceptions; and
`TenantRequest` (both paths) makes the headers aiohttp's own request class makes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientRequest
from multidict import CIMultiDict, istr
from yarl import URL

from fwproxy.config import TenantConfig
from fwproxy.direct import SKIP_AUTO_HEADERS, TenantRequest, send_bodyless
from fwproxy.upstream import create_session

# --- TenantRequest: the header passes in C make aiohttp's headers ----------------------------


@pytest.mark.parametrize("headers", [
    CIMultiDict(),
    CIMultiDict([("Accept", "text/html"), ("X-Dup", "1"), ("x-dup", "2"), ("Cookie", "a=b")]),
    CIMultiDict([("User-Agent", "curl/8"), ("Content-Type", "application/json")]),
    CIMultiDict([("Host", "other.example"), ("X-A", "1")]),  # a Host given replaces aiohttp's
    {"Accept": "application/json", "User-Agent": "fwproxy/x"},  # verify_token's dict
    None,
])
@pytest.mark.parametrize("skip", [SKIP_AUTO_HEADERS, frozenset({"Accept"}), frozenset(), None])
@pytest.mark.parametrize("data", [None, b"body"])
async def test_tenant_request_makes_the_headers_aiohttp_makes(headers: Any, skip: Any,
                                                             data: Any) -> None:
    def made(cls: type[ClientRequest]) -> ClientRequest:
        skips = None if skip is None else frozenset(istr(name) for name in skip)
        return cls("POST" if data else "GET", URL("https://tenant.example:8443/fotoweb/me"),
                   headers=None if headers is None else headers.copy(), data=data,
                   skip_auto_headers=skips)

    plain, ours = made(ClientRequest), made(TenantRequest)
    assert list(ours.headers.items()) == list(plain.headers.items())
    assert list(ours.skip_auto_headers.items()) == list(plain.skip_auto_headers.items())


# --- send_bodyless against session.request, on a raw socket ----------------------------------

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
          b"Set-Cookie: s=1\r\n\r\nhello")
Behaviour = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_tenant(behaviour: Behaviour) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A tenant on a raw socket: each connection's request head is kept in `heads`."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            await behaviour(heads[-1], writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        server.close()
        await server.wait_closed()


async def answers(head: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(ANSWER.removesuffix(b"hello") if head.startswith(b"HEAD ") else ANSWER)
    await writer.drain()


async def hangs_up(_: bytes, writer: asyncio.StreamWriter) -> None:
    return None  # closes without a byte


async def garbles(_: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
    await writer.drain()


def headers() -> CIMultiDict[str]:
    return CIMultiDict([("Authorization", "Bearer t"), ("X-Forwarded-For", "127.0.0.1"),
                        ("Accept", "*/*"), ("X-Custom", "a"), ("X-Custom", "b")])


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
async def test_the_same_request_and_answer_as_the_session(method: str) -> None:
    got: dict[str, tuple[bytes, int, list[tuple[str, str]], bytes]] = {}
    async with raw_tenant(answers) as (port, heads):
        for way in ("session", "direct"):
            session = create_session(TenantConfig(url=URL(f"http://127.0.0.1:{port}")))
            url = URL(f"http://127.0.0.1:{port}/fotoweb/a%20b?x=%2F&y", encoded=True)
            try:
                if way == "session":
                    resp = await session.request(method, url, headers=headers(),
                                                 allow_redirects=False)
                else:
                    resp = await send_bodyless(session, asyncio.get_running_loop(), method,
                                               url, headers())
                body = await resp.read()
                got[way] = (heads[-1], resp.status, list(resp.headers.items()), body)
                resp.release()
            finally:
                await session.close()
    assert got["direct"] == got["session"]
    assert got["direct"][0].startswith(f"{method} /fotoweb/a%20b?x=%2F&y HTTP/1.1\r\n".encode())
    assert b"\r\nX-Custom: a\r\nX-Custom: b\r\n" in got["direct"][0]


async def test_a_header_repeated_in_another_case_goes_as_sent() -> None:
    """The session's header merge keeps names case-sensitively and so drops ``x-custom``
    before ``X-Custom``; the short way sends every line, as a repeated same-case name is."""
    async with raw_tenant(answers) as (port, heads):
        session = create_session(TenantConfig(url=URL(f"http://127.0.0.1:{port}")))
        sent = CIMultiDict([("x-custom", "a"), ("X-Custom", "b")])
        try:
            resp = await send_bodyless(session, asyncio.get_running_loop(), "GET",
                                       URL(f"http://127.0.0.1:{port}/"), sent)
            resp.release()
        finally:
            await session.close()
    assert b"\r\nx-custom: a\r\nX-Custom: b\r\n" in heads[0]


async def failure(way: str, port: int, connect_timeout: float = 5) -> type[BaseException]:
    session = create_session(TenantConfig(url=URL(f"http://127.0.0.1:{port}"),
                                          connect_timeout=connect_timeout))
    url = URL(f"http://127.0.0.1:{port}/fotoweb/me")
    try:
        if way == "session":
            await session.request("GET", url, headers=headers(), allow_redirects=False)
        else:
            await send_bodyless(session, asyncio.get_running_loop(), "GET", url, headers())
    except BaseException as exc:  # (the type is what is compared)
        return type(exc)
    finally:
        await session.close()
    raise AssertionError("no failure")


@pytest.mark.parametrize("behaviour", [hangs_up, garbles])
async def test_the_same_failures_as_the_session(behaviour: Behaviour) -> None:
    kinds = []
    for way in ("session", "direct"):
        async with raw_tenant(behaviour) as (port, _):
            kinds.append(await failure(way, port))
    assert kinds[0] is kinds[1]
    assert issubclass(kinds[0], aiohttp.ClientError)


async def test_refused_connection_fails_as_with_the_session() -> None:
    async with raw_tenant(answers) as (port, _):
        pass  # closed: nothing listens on the port now
    kinds = [await failure(way, port) for way in ("session", "direct")]
    assert kinds[0] is kinds[1] is aiohttp.ClientConnectorError


async def test_a_connect_timeout_is_aiohttps_connection_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow_connect(self: object, *args: object, **kwargs: object) -> None:
        raise asyncio.TimeoutError  # what the connector raises when connect_timeout ends

    monkeypatch.setattr(aiohttp.TCPConnector, "connect", slow_connect)
    kinds = [await failure(way, 9) for way in ("session", "direct")]
    assert kinds[0] is kinds[1] is aiohttp.ConnectionTimeoutError


async def test_a_closed_session_is_refused_as_the_session_refuses() -> None:
    session = create_session(TenantConfig(url=URL("http://127.0.0.1:9")))
    await session.close()
    with pytest.raises(RuntimeError, match="Session is closed"):
        await send_bodyless(session, asyncio.get_running_loop(), "GET",
                            URL("http://127.0.0.1:9/"), headers())


# --- TLS: the short way takes the session's connector, so its trust ----------------------------


async def test_the_short_way_verifies_the_tenant_as_the_session_does(
        certificate: tuple[Any, Any], aiohttp_server: Any) -> None:
    """A tenant whose certificate nobody vouches for is refused before any byte of the
    request (a token) is sent; tenant.ca_file makes it trusted, tenant.verify_tls: false
    takes it as it is."""
    import ssl

    from aiohttp import web

    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    seen: list[str | None] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="tenant")

    app = web.Application()
    app.router.add_get("/", hello)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=served)
    url = URL(f"https://127.0.0.1:{server.port}/")
    loop = asyncio.get_running_loop()
    for tenant, trusted in [(TenantConfig(url=url), False),
                            (TenantConfig(url=url, ca_file=cert), True),
                            (TenantConfig(url=url, verify_tls=False), True)]:
        session = create_session(tenant)
        try:
            if not trusted:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await send_bodyless(session, loop, "GET", url,
                                        CIMultiDict(Authorization="Bearer secret"))
                continue
            resp = await send_bodyless(session, loop, "GET", url, headers())
            assert (resp.status, await resp.text()) == (200, "tenant")
            resp.release()
        finally:
            await session.close()
    assert seen == ["Bearer t", "Bearer t"]  # the untrusted one never got its request
