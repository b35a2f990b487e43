"""``fwproxy demo``: the simulated tenant and the real proxy in front of it, on loopback.

Theory of operation: both ports are taken before anything is printed, so a port in use is
one line and exit 1, not a half-started demo. The proxy's configuration is YAML text
(`demo_config_text`) parsed by the product's own `parse_config`, so the demo runs exactly
what a user's config would; ``--write-config PATH`` writes that text (0600: the secret is
inline) and an empty keys file ``PATH.keys`` for trying ``fwproxy check|token|health|key``
against the running demo. The banner (`demo_banner`) says what to try. The product never
imports this package; the CLI imports this module inside its ``demo`` command only.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from aiohttp import web

from ..config import parse_config
from ..keys import write_keys
from ..private import write_private
from ..server import serve
from ..workers import _free_port
from .app import create_tenant_app
from .state import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_NATIVE_CLIENT,
    DEMO_PASSWORD,
    DEMO_REDIRECT,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    TenantState,
)

EXIT_FAILED = 1


def demo_config_text(port: int, tenant_port: int, keys_file: Path | None = None) -> str:
    """The configuration of `fwproxy demo`'s proxy as a YAML file, for trying the other
    commands against the demo (`--write-config PATH`): the secret is inline, so the file
    is written 0600. `keys_file`: an `access.api_keys_file` for `fwproxy key`."""
    lines = [
        "# Written by `fwproxy demo`: its proxy and simulated tenant, for trying the other",
        "# commands while the demo runs, e.g. fwproxy check --config THIS-FILE",
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        "tenant:",
        f"  url: http://127.0.0.1:{tenant_port}",
        "  allow_insecure_http: true   # the demo tenant speaks plain http on loopback",
        "auth:",
        f"  client_id: {DEMO_CLIENT_ID}",
        f"  client_secret: {DEMO_CLIENT_SECRET}   # the demo's own; keep this file 0600",
    ]
    if keys_file is not None:
        lines += [
            "access:",
            f"  api_keys_file: {keys_file}   # for `fwproxy key`; the running demo asks no key",
        ]
    return "\n".join(lines) + "\n"


def oauth_tool_setup(base: str) -> str:
    """README's "Use it from an OAuth-aware tool", for a proxy at `base`."""
    return ("Use it from an OAuth-aware tool (a FotoWeb client library that wants a client "
            "ID and secret):\n"
            "  1. in the config:  local_tokens: {enabled: true}\n"
            "  2. fwproxy key add robot   # prints the client secret; the client ID is robot\n"
            f"  3. in the tool: base URL {base}, token URL {base}/fotoweb/oauth2/token,\n"
            "     client ID robot, client secret the key from step 2\n")


def demo_banner(port: int, tenant_port: int, token_lifetime: int, written: Path | None
                ) -> str:
    """What `fwproxy demo` prints before it serves."""
    base = f"http://127.0.0.1:{port}"
    tenant = f"http://127.0.0.1:{tenant_port}"
    if written is not None:
        config = (f"The other commands, against the demo (config written to {written}):\n"
                  f"  fwproxy check --config {written}\n"
                  f"  fwproxy token --config {written}\n"
                  f"  fwproxy health --config {written}\n"
                  f"  fwproxy key add NAME --config {written}\n")
    else:
        config = ("The other commands, against the demo: this config (fwproxy demo "
                  "--write-config PATH writes it, 0600):\n\n"
                  + "".join(f"  {line}\n" for line in demo_config_text(port, tenant_port)
                            .splitlines()[2:]))
    return (
        f"\nfwproxy demo: simulated tenant on {tenant} "
        f"(tokens live {token_lifetime}s), proxy on {base}\n\n"
        "Try, in another terminal (no token needed):\n"
        f"  curl -s {base}/fotoweb/me\n"
        f"  curl -s {base}/fotoweb/archives/\n"
        f"  curl -s -X POST --data-binary 'hello' {base}/sim/echo\n"
        f"  curl -s {tenant}/fotoweb/me   # direct: 401, no token\n\n"
        f"{config}\n"
        f"{oauth_tool_setup(base)}"
        "This demo's proxy answers OAuth-aware tools already (local tokens on, no API keys: "
        "any client ID):\n"
        f"  curl -s -d grant_type=client_credentials -d client_id=my-tool "
        f"{base}/fotoweb/oauth2/token\n\n"
        f"The demo tenant: client credentials {DEMO_CLIENT_ID} / {DEMO_CLIENT_SECRET}; "
        f"user login (fwproxy login) as {DEMO_USER} / {DEMO_PASSWORD} through the "
        f"authorization_code application {DEMO_WEB_CLIENT} / {DEMO_WEB_SECRET} (or the "
        f"public {DEMO_NATIVE_CLIENT}), redirect URI {DEMO_REDIRECT}.\n\n"
        "Watch the log below renew the token, requests or not. Ctrl-C stops.\n"
    )


async def demo(port: int, tenant_port: int, token_lifetime: int,
               write_config: Path | None = None) -> int:
    """The simulated tenant and the proxy in front of it, on loopback. Both ports are taken
    before anything is printed: a port in use is one line and exit 1."""
    host = "127.0.0.1"
    tenant_runner = web.AppRunner(
        create_tenant_app(TenantState(token_lifetime=token_lifetime)), access_log=None
    )
    await tenant_runner.setup()
    state = Path(tempfile.mkdtemp(prefix="fwproxy-demo-"))  # 0700
    try:
        try:
            await web.TCPSite(tenant_runner, host, tenant_port).start()
        except OSError as exc:
            print(f"fwproxy: cannot listen on {host}:{tenant_port} for the demo tenant: "
                  f"{_why(exc)}; choose another port with --tenant-port N", file=sys.stderr)
            return EXIT_FAILED
        tenant_port = tenant_runner.addresses[0][1]
        try:
            port = _free_port(host, port)
        except OSError as exc:
            print(f"fwproxy: cannot listen on {host}:{port}: {_why(exc)}; choose another "
                  "port with --port N", file=sys.stderr)
            return EXIT_FAILED
        # the demo's proxy also answers OAuth-aware tools (local tokens, no API keys: any
        # client ID), its signing key in a private directory that goes with the demo
        raw = yaml.safe_load(demo_config_text(port, tenant_port))
        raw["local_tokens"] = {"enabled": True}
        raw["auth"]["token_store"] = str(state / "tokens.json")
        settings = parse_config(raw, environ={}, source="<demo>")
        if write_config is not None:
            keys = write_config.with_suffix(".keys").absolute()
            try:
                write_private(write_config, demo_config_text(port, tenant_port, keys))
                if not keys.exists():
                    write_keys(keys, [])
            except OSError as exc:
                print(f"fwproxy: cannot write {write_config}: {_why(exc)}", file=sys.stderr)
                return EXIT_FAILED
        print(demo_banner(port, tenant_port, token_lifetime, write_config), flush=True)
        return await serve(settings)
    finally:
        await tenant_runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)
