"""What leaves the process for clients and scrapers: error bodies, readiness, the status
page and metrics show no secret in any encoding, no other client's request, and (with API
keys) only to key holders."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fwproxy import keys
from fwproxy.answers import error_response, raw_error_response
from fwproxy.encodings import encodings
from fwproxy.exceptions import TokenEndpointError, TokenError, oauth_reason
from fwproxy.log import MASK, Redactor, basic_credentials, outward, setup_logging
from fwproxy.sim import TENANT, TenantState, token_endpoint
from fwproxy.store import StoredSession, TokenStore
from fwproxy.tokens import parse_token_response
from tests.conftest import ProxyFactory
from tests.test_log import Recording

Client = TestClient[Any, Any]
TOKEN_PATH = "/fotoweb/oauth2/token"
CLIENT_ID = "echo-client"
# every character that changes under form, percent, JSON or HTML encoding
SECRET = 'S3cr3t-k3y p+ss/w"rd\\\u00fc&x=1%<y>'
REFRESH = "R3fr3sh-t0k3n/with+odd=chars"


def shapes(value: str, user: str = CLIENT_ID) -> frozenset[str]:
    """`value` in every shape an echo may carry it in, and a prefix a cut could leave."""
    raw = value.encode()
    spelled = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
               raw.hex(), raw.hex().upper()}  # spelled out here too: a test of encodings
    return encodings(value) | basic_credentials(user, value) | {value[:10]} | spelled


def echo(shape: str, form: dict[str, str], body: str, authorization: str) -> str:
    """The request, echoed into error_description the way a careless endpoint might."""
    secret = form.get("client_secret", "")
    pair = f"{form['client_id']}:{secret}".encode()
    slashed = json.dumps(form).replace("/", "\\/")
    return {
        "form": f"bad credentials: {body}",
        "plain": f"bad credentials: {secret}",
        "repr": f"bad credentials: {form}",
        "json": f"bad request {json.dumps(form)}",
        "json-slash": f"bad request {slashed}",
        "percent-lower": "bad credentials: " + quote(secret, safe="").lower(),
        "basic": f"expected Authorization: Basic {base64.b64encode(pair).decode()}",
        "basic-bare": f"credentials {base64.b64encode(pair).decode()} refused",
        "header": f"you sent Authorization: {authorization}",
        "long": "x" * 190 + f" {body}",  # the secret straddles the length bound
        "base64": f"bad secret {base64.b64encode(secret.encode()).decode()}",
        "base64-url": f"bad {base64.urlsafe_b64encode(secret.encode()).decode().rstrip('=')}",
        "hex": f"bad secret {secret.encode().hex()}, {secret.encode().hex().upper()}",
    }[shape]


def echoing_tenant(shape: str) -> web.Application:
    """A token endpoint that refuses and echoes the request back in every field it has."""

    async def token(request: web.Request) -> web.Response:
        body = await request.text()
        form = dict(parse_qsl(body))
        secret = form.get("client_secret", form.get("refresh_token", ""))
        authorization = request.headers.get(
            "Authorization",
            "Basic " + base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode())
        return web.json_response({
            "error": f"invalid_client {secret}",
            "error_description": "\x1b[2J\r\n" + echo(shape, form, body, authorization),
            "error_uri": f"https://idp.example/help?{body}",
        }, status=401)

    app = web.Application()
    app.router.add_post(TOKEN_PATH, token)
    return app


@pytest.fixture
def logs() -> Iterator[Recording]:
    """stderr as fwproxy writes it (redacting handler) at debug level."""
    buffer = Recording()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("debug", stream=buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


async def everything_shown(client: Client) -> dict[str, str]:
    """What a client and a scraper can see, after a request that needed a token."""
    shown = {}
    async with client.get("/fotoweb/me?q=1") as resp:
        assert resp.status == 503
        shown["503 body"] = await resp.text()
    async with client.get("/_fwproxy/ready") as resp:
        assert resp.status == 503
        shown["ready"] = await resp.text()
    async with client.get("/_fwproxy/") as resp:
        assert resp.status == 200
        shown["status page"] = await resp.text()
    async with client.get("/_fwproxy/metrics") as resp:
        assert resp.status == 200
        shown["metrics"] = await resp.text()
    return shown


SHAPES = ["form", "plain", "repr", "json", "json-slash", "percent-lower", "basic", "basic-bare",
          "header", "long", "base64", "base64-url", "hex"]


@pytest.mark.parametrize("shape", SHAPES)
async def test_an_echoed_client_secret_is_shown_nowhere(
    shape: str, make_proxy: ProxyFactory, logs: Recording, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_proxy(app=echoing_tenant(shape),
                              auth={"client_id": CLIENT_ID, "client_secret": SECRET})
    shown = await everything_shown(client)
    assert "token endpoint refused (HTTP 401)" in shown["503 body"]  # it still says why
    assert json.loads(shown["ready"])["reason"] == "other"  # the "error" was not a code
    assert 'fwproxy_token_failures_total{reason="other"}' in shown["metrics"]
    shown["log"] = logs.getvalue()
    shown["log records"] = "\n".join(r.getMessage() for r in caplog.records)
    assert "token request failed" in shown["log"]
    for where, text in shown.items():
        for form in shapes(SECRET):
            assert form not in text, f"{form!r} in the {where}"
        assert "\x1b" not in text


async def test_an_echoed_refresh_token_is_shown_nowhere(
    make_proxy: ProxyFactory, logs: Recording, tmp_path: Path,
) -> None:
    store = tmp_path / "state" / "tokens.json"
    TokenStore(store).save(StoredSession(refresh_token=REFRESH))
    client = await make_proxy(app=echoing_tenant("form"), auth={
        "grant_type": "authorization_code", "client_id": CLIENT_ID,
        "redirect_uri": "http://127.0.0.1:8765/callback", "token_store": str(store),
        "client_secret": None})  # a public (native) client: only the refresh token
    shown = await everything_shown(client)
    shown["log"] = logs.getvalue()
    assert "refresh_token" in shown["503 body"]  # the echo is there, masked
    for where, text in shown.items():
        for form in shapes(REFRESH):
            assert form not in text, f"{form!r} in the {where}"


def test_the_token_endpoints_text_is_masked_cleaned_and_bounded_in_the_exception() -> None:
    from fwproxy.log import REDACT

    REDACT.pin(SECRET, CLIENT_ID)
    body = json.dumps({"error": "invalid_client\x1b[31m",
                       "error_description": "\r\nforged line " + SECRET + "y" * 500})
    with pytest.raises(TokenEndpointError) as caught:
        parse_token_response(401, "application/json", body.encode(), 0.0, 60.0)
    text = str(caught.value)
    assert SECRET not in text
    assert MASK in text
    assert not any(c in text for c in "\r\n\x1b")
    assert len(caught.value.description or "") <= 200
    assert caught.value.reason == "other"


@pytest.mark.parametrize("status", [200, 401])
def test_an_endpoints_content_type_is_masked_cleaned_and_bounded(status: int) -> None:
    from fwproxy.log import REDACT

    REDACT.pin(SECRET)
    content_type = f"text/x-{SECRET}\x7f" + "z" * 500 + f"; charset={SECRET}"
    with pytest.raises(TokenError) as caught:
        parse_token_response(status, content_type, b"<html>", 0.0, 60.0)
    text = str(caught.value)
    assert SECRET not in text
    assert "\x7f" not in text
    assert len(text) < 200


def test_error_bodies_go_out_masked_cleaned_and_bounded() -> None:
    response = error_response(502, "upstream_unreachable", "cannot connect: http://h/x?"
                              "access_token=t0k3n-in-url\r\nX-Forged: 1 " + "y" * 1000)
    assert isinstance(response.body, bytes)
    detail = json.loads(response.body)["detail"]
    assert "t0k3n-in-url" not in detail
    assert "\r" not in detail
    assert "\n" not in detail
    assert len(detail) <= 400


def test_raw_error_answers_go_out_like_the_others() -> None:
    """The connection layer's answers (431, 503 busy), written as bytes before aiohttp
    parses a request, carry the same JSON as `error_response`, through `outward` too."""
    detail = "the head of http://h/x?access_token=t0k3n-in-url\r\nX-Forged: 1 " + "y" * 1000
    raw = raw_error_response(431, "Request Header Fields Too Large", "headers_too_large",
                             detail)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    same = error_response(431, "headers_too_large", detail)
    assert isinstance(same.body, bytes)
    assert json.loads(body) == json.loads(same.body)
    assert b"t0k3n-in-url" not in body


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        ("invalid_client", 401, "invalid_client"),
        ("invalid_grant", 400, "invalid_grant"),
        ("temporarily_unavailable", 503, "temporarily_unavailable"),
        ("http_503", 503, "http_503"),  # no OAuth JSON: fwproxy's own name for the status
        ("http_503", 401, "other"),  # an endpoint that says "http_503" itself
        ("Invalid_Client", 401, "other"),
        (f"invalid_client {SECRET}", 401, "other"),
        ('x"} 1\nfwproxy_up 0', 400, "other"),
        ("", 400, "other"),
    ],
)
def test_failure_reasons_are_a_closed_set(error: str, status: int, reason: str) -> None:
    assert oauth_reason(error, status) == reason
    assert TokenEndpointError(status, error, None).reason == reason


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("line\r\nforged: yes", "line forged: yes"),
        ("esc\x1b[2Jbell\x07c1\x85ls\u2028", "esc [2Jbell c1 ls "),
        ("y" * 500, "y" * 399 + "\u2026"),
        ("GET /x?access_token=abc", f"GET /x?access_token={MASK}"),
    ],
)
def test_outward_text_is_clean_and_bounded(text: str, shown: str) -> None:
    assert outward(text) == shown


def test_outward_masks_before_it_cuts() -> None:
    from fwproxy.log import REDACT

    REDACT.pin(SECRET)
    out = outward("z" * 395 + SECRET, limit=400)
    assert SECRET[:4] not in out


async def test_last_errors_show_no_path_or_query(make_proxy: ProxyFactory) -> None:
    app = web.Application()  # the demo's token endpoint, and a resource that fails
    app[TENANT] = TenantState()
    app.router.add_post(TOKEN_PATH, token_endpoint)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    app.router.add_get("/fotoweb/broken/{tail:.*}", broken)
    client = await make_proxy(app=app)
    async with client.get("/fotoweb/broken/alice-private-album?access_token=own-t0ken"
                          "&q=confidential-query") as resp:
        assert resp.status == 500
    async with client.get("/_fwproxy/") as resp:
        page = await resp.text()
    errors = page.split('<ul id="errors">')[1].split("</ul>")[0]
    assert "<b>500</b> GET" in errors  # when, what kind, which method
    for private in ("alice-private-album", "own-t0ken", "confidential-query", "/fotoweb"):
        assert private not in page


@pytest.fixture
def api_keys(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "keys"
    return path, keys.add_key(path, "writer"), keys.add_key(path, "reader", read_only=True)


@pytest.mark.parametrize("path", ["/_fwproxy/", "/_fwproxy", "/_fwproxy/metrics"])
async def test_status_page_and_metrics_need_a_key_even_from_loopback(
    make_proxy: ProxyFactory, api_keys: tuple[Path, str, str], path: str,
) -> None:
    file, writer, reader = api_keys
    client = await make_proxy(access={"api_keys_file": str(file)})
    async with client.get(path) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "api_key_required"
    async with client.get(path, headers={"X-Fwproxy-Key": writer + "x"}) as resp:
        assert resp.status == 401
    for key in (writer, reader):  # any valid key, a read-only one too
        async with client.get(path, headers={"X-Fwproxy-Key": key}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("path", ["/_fwproxy/health", "/_fwproxy/ready"])
async def test_probes_stay_open_to_loopback_with_keys(
    make_proxy: ProxyFactory, api_keys: tuple[Path, str, str], path: str,
) -> None:
    client = await make_proxy(access={"api_keys_file": str(api_keys[0])})
    async with client.get(path) as resp:
        assert resp.status == 200


async def test_without_keys_the_status_page_needs_none(make_proxy: ProxyFactory) -> None:
    client = await make_proxy()
    for path in ("/_fwproxy/", "/_fwproxy/metrics"):
        async with client.get(path) as resp:
            assert resp.status == 200


TOKEN = "aT0k/en+v=al"  # an access token with the characters that encode differently


@pytest.mark.parametrize(
    "echoed",
    [
        "aT0k/en+v=al",  # raw
        "aT0k%2Fen%2Bv%3Dal",  # form- or percent-encoded
        "aT0k%2fen%2bv%3dal",  # lower-case hex
        "aT0k/en%2Bv%3Dal",  # percent-encoded, "/" kept
        "aT0k\\/en+v=al",  # JSON with "\/"
        base64.b64encode(b"aT0k/en+v=al").decode(),
        base64.urlsafe_b64encode(b"Bearer aT0k/en+v=al").decode().rstrip("="),
        "6154306b2f656e2b763d616c",  # hex
        "&#97;&#84;&#48;&#107;&#47;&#101;&#110;&#43;&#118;&#61;&#97;&#108;",
        "\\u0061\\u0054\\u0030\\u006b\\u002f\\u0065\\u006e\\u002b\\u0076\\u003d\\u0061\\u006c",
    ],
)
def test_a_remembered_token_is_masked_in_each_encoding(echoed: str) -> None:
    redact = Redactor()
    redact.add(TOKEN)
    out = redact(f"the tenant said: {echoed}!")
    assert out == f"the tenant said: {MASK}!"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("Authorization: Basic " + base64.b64encode(b"someone:else").decode(), True),
        ("authorization: basic " + base64.b64encode(b"x:y-z").decode(), True),
        ("HTTP Basic authentication failed", False),  # prose stays readable
    ],
)
def test_any_basic_credential_is_masked(text: str, masked: bool) -> None:
    assert (MASK in Redactor()(text)) is masked


def test_the_client_secret_is_masked_inside_basic_credentials() -> None:
    redact = Redactor()
    redact.pin("s3cret+/", "my client")
    raw = base64.b64encode(b"my client:s3cret+/").decode()
    encoded = base64.b64encode(b"my+client:s3cret%2B%2F").decode()
    assert redact(f"[{raw}] [{encoded}]") == f"[{MASK}] [{MASK}]"


def test_every_secret_a_token_request_carries_is_masked_from_then_on() -> None:
    from fwproxy.log import REDACT
    from fwproxy.oauth import remember_secrets
    from fwproxy.tokens import authorization_code_form, refresh_token_form

    remember_secrets(authorization_code_form("web app", "cl1ent/secret", "the-c0de",
                                             "http://127.0.0.1:8765/cb", "v3rifier-value"))
    remember_secrets(refresh_token_form("web app", None, "rt+rotated/1"))
    for leak in ("cl1ent/secret", "cl1ent%2Fsecret", "the-c0de", "v3rifier-value",
                 "rt+rotated/1", "rt%2Brotated%2F1",
                 base64.b64encode(b"web app:cl1ent/secret").decode()):
        assert REDACT(f"echo: {leak}.") == f"echo: {MASK}.", leak
