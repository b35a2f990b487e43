"""The local token endpoint's decisions, as tables: no event loop, no I/O."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus

import pytest

from fwproxy.keys import ApiKey, digest
from fwproxy.localtokens import OPEN, Holder, Refused, fingerprint
from fwproxy.tokenendpoint import (
    BASIC_CHALLENGE,
    MAX_BODY,
    Answer,
    OAuthError,
    TokenRequest,
    authenticate,
    invalid_token_response,
    parse_token_request,
    token_response,
)

FORM = "application/x-www-form-urlencoded"
SECRET = "fwp_s3cr3t+/=&%"  # characters that must be form-encoded
ROBOT = ApiKey("robot", digest(SECRET))
VIEWER = ApiKey("viewer", digest("fwp_viewer"), read_only=True)
STORE = {digest(SECRET): ROBOT, digest("fwp_viewer"): VIEWER}


def find(presented: str | None) -> ApiKey | None:
    return STORE.get(digest(presented)) if presented else None


def basic(client_id: str, secret: str, encode: bool = True) -> str:
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def parse(body: str | bytes, authorization: str | None = None, method: str = "POST",
          content_type: str | None = FORM, query: str = "") -> TokenRequest | OAuthError:
    raw = body.encode() if isinstance(body, str) else body
    return parse_token_request(method, content_type, raw, authorization, query=query)


GOOD = "grant_type=client_credentials"
POST_CREDS = f"{GOOD}&client_id=robot&client_secret={quote_plus(SECRET)}"


@pytest.mark.parametrize(("body", "authorization", "expected"), [
    (POST_CREDS, None, TokenRequest("robot", SECRET, "client_secret_post")),
    (GOOD, basic("robot", SECRET), TokenRequest("robot", SECRET, "client_secret_basic")),
    # the same client_id in the body as in Basic is no second credential
    (f"{GOOD}&client_id=robot", basic("robot", SECRET),
     TokenRequest("robot", SECRET, "client_secret_basic")),
    # Basic parts are form-encoded before base64 (RFC 6749 2.3.1): "a b" travels as "a+b"
    (GOOD, basic("my robot", "x y"), TokenRequest("my robot", "x y", "client_secret_basic")),
    (f"{GOOD}&client_id=tool", None, TokenRequest("tool", None, "client_secret_post")),
    # scope accepted and ignored; unknown parameters ignored; empty values are omitted
    (f"{GOOD}&client_id=tool&scope=a+b&foo=1&client_secret=", None,
     TokenRequest("tool", None, "client_secret_post", "a b")),
    (f"grant_type=&{GOOD}&client_id=tool&&", None,
     TokenRequest("tool", None, "client_secret_post")),
    ("client_id=tool&grant_type=client%5Fcredentials", None,
     TokenRequest("tool", None, "client_secret_post")),
    (GOOD, "basic " + basic("robot", SECRET)[6:],  # the scheme is case-insensitive
     TokenRequest("robot", SECRET, "client_secret_basic")),
])
def test_well_formed_requests(body: str, authorization: str | None,
                              expected: TokenRequest) -> None:
    assert parse(body, authorization) == expected


def invalid(description: str, status: int = 400) -> OAuthError:
    return OAuthError(status, "invalid_request", description)


BOTH = invalid("client credentials both in the Authorization header and in the body")
NOT_FORM = invalid(f"send the parameters as {FORM} (UTF-8)")
BAD_BASIC = invalid("the Basic credentials are not base64 of client_id:client_secret")
BAD_ID = invalid("client_id must be 1 to 255 printable ASCII characters")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"body": POST_CREDS, "method": "GET"},
     OAuthError(405, "invalid_request", "the token endpoint takes POST only", allow="POST")),
    ({"body": POST_CREDS, "method": "PUT"},
     OAuthError(405, "invalid_request", "the token endpoint takes POST only", allow="POST")),
    ({"body": GOOD, "query": "client_secret=x"},
     invalid("send the parameters in the body, not in the URL")),
    ({"body": POST_CREDS, "content_type": None}, NOT_FORM),
    ({"body": POST_CREDS, "content_type": "application/json"}, NOT_FORM),
    ({"body": POST_CREDS, "content_type": "multipart/form-data; boundary=x"}, NOT_FORM),
    ({"body": POST_CREDS, "content_type": f"{FORM}; charset=latin-1"}, NOT_FORM),
    ({"body": "a=" + "x" * MAX_BODY}, invalid(f"the request body exceeds {MAX_BODY} bytes", 413)),
    ({"body": GOOD.encode() + b"&client_id=caf\xc3\xa9"},
     invalid(f"the body is not {FORM}")),
    ({"body": f"{GOOD}&client_id=%ff"}, invalid("a parameter is not percent-encoded UTF-8")),
    ({"body": f"{GOOD}&{GOOD}"}, invalid("grant_type is repeated")),
    ({"body": f"{POST_CREDS}&client_secret=again"}, invalid("client_secret is repeated")),
    ({"body": f"{POST_CREDS}&client%5Fid=again"}, invalid("client_id is repeated")),
    ({"body": f"{POST_CREDS}&x={quote_plus(SECRET)}&x=1"}, invalid("a parameter is repeated")),
    ({"body": "client_id=robot"}, invalid("grant_type is missing")),
    ({"body": ""}, invalid("grant_type is missing")),
    ({"body": "grant_type=&client_id=robot"}, invalid("grant_type is missing")),
    ({"body": GOOD, "authorization": "Basic !!!"}, BAD_BASIC),
    ({"body": GOOD, "authorization": "Basic cm9ib3Q="}, BAD_BASIC),  # "robot": no colon
    ({"body": GOOD, "authorization": "Basic"}, BAD_BASIC),
    ({"body": GOOD, "authorization": "Basic " + base64.b64encode(b"r:\xff").decode()},
     BAD_BASIC),
    ({"body": GOOD, "authorization": basic("robot", "%zz%ff", encode=False)}, BAD_BASIC),
    ({"body": GOOD, "authorization": ""}, invalid("the Authorization header is empty")),
    ({"body": f"{GOOD}&client_secret=x", "authorization": basic("robot", SECRET)}, BOTH),
    ({"body": f"{GOOD}&client_id=other", "authorization": basic("robot", SECRET)}, BOTH),
    ({"body": f"{GOOD}&client_secret=x"}, invalid("client_secret without client_id")),
    ({"body": f"{GOOD}&client_id=" + "x" * 256}, BAD_ID),
    ({"body": f"{GOOD}&client_id=a%0Ab"}, BAD_ID),
    ({"body": f"{GOOD}&client_id=caf%C3%A9"}, BAD_ID),
    ({"body": GOOD, "authorization": basic("", "x")}, BAD_ID),
    ({"body": "grant_type=password&client_id=robot&username=u&password=p"},
     OAuthError(400, "unsupported_grant_type",
                "this endpoint issues local tokens for grant_type=client_credentials only")),
    ({"body": "grant_type=authorization_code&code=x", "authorization": basic("r", "s")},
     OAuthError(400, "unsupported_grant_type",
                "this endpoint issues local tokens for grant_type=client_credentials only")),
    ({"body": GOOD}, OAuthError(401, "invalid_client", "no client authentication: send "
                                "client_id (and client_secret)", BASIC_CHALLENGE)),
    ({"body": GOOD, "authorization": "Bearer abc"},
     OAuthError(401, "invalid_client", "authenticate with Basic or with client_id and "
                "client_secret in the body", BASIC_CHALLENGE)),
])
def test_refused_requests(kwargs: dict[str, str], expected: OAuthError) -> None:
    assert parse(**kwargs) == expected


def test_parameters_are_matched_after_decoding_and_case_sensitive() -> None:
    assert parse("GRANT_TYPE=client_credentials&client_id=x") == invalid("grant_type is missing")


@pytest.mark.parametrize("content_type", [
    FORM, "Application/X-WWW-Form-Urlencoded", f"{FORM}; charset=UTF-8",
    f'{FORM};charset="utf-8"', f"{FORM}; charset=us-ascii",
])
def test_form_content_types(content_type: str) -> None:
    assert isinstance(parse(POST_CREDS, content_type=content_type), TokenRequest)


FAILED = OAuthError(401, "invalid_client", "client authentication failed", BASIC_CHALLENGE)


@pytest.mark.parametrize(("request_", "expected"), [
    (TokenRequest("robot", SECRET, "client_secret_post"), Holder.of_key(ROBOT)),
    (TokenRequest("robot", SECRET, "client_secret_basic"), Holder.of_key(ROBOT)),
    (TokenRequest("viewer", "fwp_viewer", "client_secret_basic"), Holder.of_key(VIEWER)),
    (TokenRequest("robot", "fwp_wrong", "client_secret_post"), FAILED),
    (TokenRequest("robot", None, "client_secret_post"), FAILED),
    (TokenRequest("robot", "", "client_secret_basic"), FAILED),
    # another key's secret does not make you that key, nor this one
    (TokenRequest("robot", "fwp_viewer", "client_secret_basic"), FAILED),
    (TokenRequest("nobody", SECRET, "client_secret_post"), FAILED),
])
def test_authenticate_with_api_keys(request_: TokenRequest,
                                    expected: Holder | OAuthError) -> None:
    assert authenticate(request_, find) == expected


def test_read_only_keys_stay_read_only() -> None:
    holder = authenticate(TokenRequest("viewer", "fwp_viewer", "client_secret_post"), find)
    assert isinstance(holder, Holder)
    assert holder.read_only
    assert holder.fingerprint == fingerprint(VIEWER.digest)


@pytest.mark.parametrize("secret", [None, "", "anything"])
def test_without_api_keys_any_client_id_gets_a_token(secret: str | None) -> None:
    holder = authenticate(TokenRequest("tool", secret, "client_secret_post"), None)
    assert holder == Holder("tool", OPEN)


def test_token_response_is_fotowebs_shape_and_never_cached() -> None:
    answer = token_response("fwpl_abc.def", 3600.0)
    assert answer == Answer(200, {"Content-Type": "application/json;charset=UTF-8",
                                  "Cache-Control": "no-store", "Pragma": "no-cache"},
                            b'{"access_token":"fwpl_abc.def","token_type":"bearer",'
                            b'"expires_in":3600}')


def test_error_answer_is_rfc_6749_json_never_cached() -> None:
    answer = FAILED.answer()
    assert answer.status == 401
    assert answer.headers == {"Content-Type": "application/json;charset=UTF-8",
                              "Cache-Control": "no-store", "Pragma": "no-cache",
                              "WWW-Authenticate": 'Basic realm="fwproxy", charset="UTF-8"'}
    assert json.loads(answer.body) == {"error": "invalid_client",
                                       "error_description": "client authentication failed",
                                       "detail": "client authentication failed"}
    allow = parse(GOOD, method="GET")
    assert isinstance(allow, OAuthError)
    assert allow.answer().headers["Allow"] == "POST"
    assert allow.answer().status == 405


def test_no_answer_echoes_the_secret() -> None:
    encoded = quote_plus(SECRET)
    cases = [
        parse(f"{POST_CREDS}&client_secret={encoded}"),
        parse(f"{GOOD}&client_secret={encoded}", basic("robot", SECRET)),
        parse(f"{GOOD}&client_secret={encoded}"),
        parse(f"grant_type=password&client_id=x&client_secret={encoded}"),
        parse(f"{GOOD}&{encoded}={encoded}&{encoded}=1"),
        parse(POST_CREDS.replace("robot", "x" * 300)),
        authenticate(TokenRequest("nobody", SECRET, "client_secret_post"), find),
    ]
    for error in cases:
        assert isinstance(error, OAuthError)
        text = repr(error) + repr(error.answer())
        assert SECRET not in text
        assert encoded not in text
    assert SECRET not in repr(TokenRequest("robot", SECRET, "client_secret_post"))


def test_descriptions_use_only_the_characters_rfc_6749_allows() -> None:
    """error_description is %x20-21 / %x23-5B / %x5D-7E (RFC 6749 5.2): no quote or
    backslash, which would also break the quoted string of a Bearer challenge."""
    allowed = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}
    refused = test_refused_requests.pytestmark[0].args[1]  # type: ignore[attr-defined]
    descriptions = [expected.description for _, expected in refused]
    descriptions += [FAILED.description]
    descriptions += [Refused(reason).detail for reason in
                     ("malformed", "bad_signature", "expired", "not_yet_valid", "revoked")]
    for description in descriptions:
        assert set(description) <= allowed, description


@pytest.mark.parametrize(("reason", "description"), [
    ("malformed", "the local token is malformed"),
    ("bad_signature", "the local token was not issued by this proxy"),
    ("expired", "the local token has expired"),
    ("not_yet_valid", "the local token was issued in the future"),
    ("revoked", "the local token was revoked (its API key was removed or replaced)"),
])
def test_invalid_token_response_rfc_6750(reason: str, description: str) -> None:
    answer = invalid_token_response(Refused(reason))  # type: ignore[arg-type]
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == (
        f'Bearer realm="fwproxy", error="invalid_token", error_description="{description}"')
    assert answer.headers["Cache-Control"] == "no-store"
    assert json.loads(answer.body) == {"error": "invalid_token", "detail": description}
    assert '"' not in description
    assert "\\" not in description


def test_the_whole_flow_request_to_token_to_verified_claims() -> None:
    """What the handler and admission will do, pure: a key's token carries its rights, and
    dies with the key; the same name added again does not revive it."""
    from fwproxy.localtokens import Claims, SigningKey, StaticKeys, issue, verify

    keys = StaticKeys((SigningKey(1, b"s" * 32),))
    request = parse(GOOD, basic("viewer", "fwp_viewer"))
    assert isinstance(request, TokenRequest)
    holder = authenticate(request, find)
    assert isinstance(holder, Holder)
    answer = token_response(issue(keys.current(), holder, 1000.0, 3600), 3600)
    token = json.loads(answer.body)["access_token"]

    def live(names: dict[str, ApiKey]) -> dict[str, Holder]:
        return {name: Holder.of_key(key) for name, key in names.items()}

    claims = verify(keys, token, 1001.0, live({"viewer": VIEWER}).get)
    assert isinstance(claims, Claims)
    assert claims.read_only
    assert claims.holder.key is VIEWER
    assert verify(keys, token, 1001.0, live({}).get) == Refused("revoked")
    again = ApiKey("viewer", digest("fwp_viewer-again"), read_only=True)
    assert verify(keys, token, 1001.0, live({"viewer": again}).get) == Refused("revoked")
    assert verify(keys, token, 4600.0, live({"viewer": VIEWER}).get) == Refused("expired")
