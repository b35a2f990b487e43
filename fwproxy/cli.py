"""Command line: ``fwproxy run|check|token|health|login|logout|key|demo``.

Exit 0 ok, 1 failed, 2 configuration or usage error (one line naming the key).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from . import __version__, eventloop
from .config import (
    ListenConfig,
    Settings,
    StatusConfig,
    effective_config_lines,
    is_loopback,
)
from .exceptions import (
    ADD_FIRST,
    ConfigError,
    KeyExists,
    MissingKeysFile,
    TokenError,
    UpstreamError,
)
from .keys import (
    add_key,
    load_keys,
    remove_key,
)
from .loading import find_config, load_config
from .log import setup_logging
from .login import login
from .oauth import make_grant, read_limited
from .server import serve
from .store import TokenStore
from .upstream import create_session, map_upstream_errors
from .workers import run_workers

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_PORT, DEMO_TENANT_PORT = 8080, 8081  # `fwproxy demo --port N --tenant-port N`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwproxy",
        description="Authenticating reverse proxy for FotoWeb: plain HTTP in, OAuth out.",
    )
    parser.add_argument("--version", action="version", version=f"fwproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default: search)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log level; beats log.level in the config")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        """A subcommand whose --help page says what it does, as the command list does."""
        return commands.add_parser(name, parents=[common], help=summary,
                                   description=summary[0].upper() + summary[1:] + ".")

    command("run", "run the proxy")
    command("check", "validate config, get a token, call /fotoweb/me")
    command("token", "print one valid access token")
    command("health", "exit 0 when the running proxy answers its health check")
    login = command("login", "log in as a FotoWeb user (grant_type: authorization_code)")
    login.add_argument("--no-browser", action="store_true",
                       help="only print the URL (for SSH sessions)")
    login.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                       help="give up when no login comes back within this long (default 300)")
    command("logout", "remove the stored user session")
    demo = command("demo", "run the proxy in front of a built-in simulated tenant")
    key = command("key", "manage API keys (access.api_keys_file)")
    key.add_argument("action", choices=["add", "list", "remove"])
    key.add_argument("name", nargs="?", help="the key's name (add, remove)")
    key.add_argument("--read-only", action="store_true", help="add: GET, HEAD, OPTIONS only")
    key.add_argument("--file", metavar="PATH", help="keys file (default: from the config)")
    demo.add_argument("--port", type=int, default=DEMO_PORT,
                      help=f"proxy port (default {DEMO_PORT}; 0: any free port)")
    demo.add_argument("--tenant-port", type=int, default=DEMO_TENANT_PORT, metavar="N",
                      help=f"simulated tenant's port (default {DEMO_TENANT_PORT})")
    demo.add_argument("--write-config", metavar="PATH",
                      help="write a config (0600) for trying the other commands against "
                           "the demo, and an empty keys file PATH.keys for `fwproxy key`")
    demo.add_argument("--token-lifetime", type=int, default=30, metavar="SECONDS",
                      help="lifetime of the demo tenant's tokens, short so renewals show")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        if args.command == "demo":
            return demo(args)
        if args.command == "key":
            return manage_keys(args, environ)
        if args.command == "health" and not _has_config(args.config, environ):
            return health(None)
        path = find_config(args.config, environ)
        settings = _with_level(load_config(path, environ), args.log_level)
    except MissingKeysFile as exc:  # say the exact command, with the same --config
        how = ADD_FIRST + (f" --config {args.config}" if args.config else "")
        print(f"fwproxy: configuration error: {exc.key}: {exc.path} does not exist; "
              f"create it with its first key: {how}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"fwproxy: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "health":
        return health(settings)
    if args.command == "logout":
        if settings.auth.token_store is None:  # client credentials: no user, no session
            print(f"nothing to log out of: auth.grant_type is {settings.auth.grant_type}, "
                  "which keeps no user session")
            return EXIT_OK
        if settings.state.shared:  # the fleet's session, in Redis
            try:
                from .fleetsession import logout  # (redis-py: only for a fleet)

                removed = asyncio.run(logout(settings))
            except TokenError as exc:
                print(f"fwproxy: {exc}", file=sys.stderr)
                return EXIT_FAILED
        else:
            removed = TokenStore(settings.auth.token_store).logout()
        print("logged out" if removed else "there was no stored session")
        return EXIT_OK
    if args.command == "login" and not settings.auth.user_context:
        print("fwproxy: configuration error: auth.grant_type: login needs "
              "authorization_code (a client-credentials app has no user)", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log.level, settings.log.format)
    if args.command == "login":
        outcome = asyncio.run(login(settings, open_browser=not args.no_browser,
                                    timeout=args.timeout,
                                    say=lambda line: print(line, flush=True)))
        print(outcome.message if outcome.ok else f"fwproxy: {outcome.message}",
              file=sys.stdout if outcome.ok else sys.stderr)
        return EXIT_OK if outcome.ok else EXIT_FAILED
    try:
        if args.command == "run":
            def reload() -> Settings:
                return _with_level(load_config(path, environ), args.log_level)

            if settings.listen.workers > 1:
                return run_workers(settings, reload)
            return eventloop.run(serve(settings, reload=reload), settings.listen.event_loop)
        return asyncio.run(check(settings) if args.command == "check" else token(settings))
    except KeyboardInterrupt:
        return EXIT_OK


def _with_level(settings: Settings, level: str | None) -> Settings:
    """`--log-level` beats the config, on start and on every reload."""
    if level is None:
        return settings
    return dataclasses.replace(settings, log=dataclasses.replace(settings.log, level=level))


def _has_config(explicit: str | None, environ: Mapping[str, str]) -> bool:
    try:
        find_config(explicit, environ)
    except ConfigError:
        return False
    return True


def health(settings: Settings | None) -> int:
    """GET the running proxy's health page (a container HEALTHCHECK: no curl needed).
    Without any configuration: the default address, 127.0.0.1:8080."""
    listen, status = (ListenConfig(), StatusConfig()) if settings is None else (
        settings.listen, settings.status)
    host = listen.host
    if not is_loopback(host) and host not in ("0.0.0.0", "::", ""):  # noqa: S104
        target = f"[{host}]" if ":" in host else host
    else:
        target = "[::1]" if host == "::" else "127.0.0.1"
    url = f"http://{target}:{listen.port}{status.prefix}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        hint = " (no config found: probed the default address)" if settings is None else ""
        print(f"fwproxy: {url}: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if ok else EXIT_FAILED


def manage_keys(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``fwproxy key add|list|remove``: the new key is printed once, only its hash is kept."""
    configured: Path | None
    settings: Settings | None = None
    if args.file:
        configured = Path(args.file)
    else:
        found = find_config(args.config, environ)
        try:
            settings = load_config(found, environ)
            configured = settings.access.api_keys_file
        except MissingKeysFile as missing:  # no key yet: what `key add` is for
            configured = missing.path
            with contextlib.suppress(ConfigError):  # the rest, for what `tool_setup` says
                settings = load_config(found, {**environ, "FWPROXY_ACCESS_API_KEYS_FILE": ""})
        if configured is None:
            raise ConfigError("access.api_keys_file", "is not set; set it or pass --file PATH")
    path = configured
    if args.action == "list":
        for key in load_keys(path) if path.exists() else []:
            print(key.name + " (read only)" * key.read_only)
        return EXIT_OK
    if not args.name:
        raise ConfigError("NAME", f"`fwproxy key {args.action}` needs the key's name")
    if args.action == "add":
        try:
            secret = add_key(path, args.name, args.read_only)
        except KeyExists:
            print(f"fwproxy: key {args.name} exists in {path}; remove it first: "
                  f"fwproxy key remove {args.name}", file=sys.stderr)
            return EXIT_FAILED
        print(secret)
        print(f"fwproxy: key {args.name!r} added to {path}; it is shown only this once\n"
              f"{tool_setup(args.name, settings)}", file=sys.stderr)
        return EXIT_OK
    if not remove_key(path, args.name):
        print(f"fwproxy: no key named {args.name!r} in {path}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def tool_setup(name: str, settings: Settings | None) -> str:
    """What to put in an OAuth-aware tool for a new key (README: "Use it from an
    OAuth-aware tool"); the secret is the key printed on stdout, never repeated here."""
    where = "fwproxy's address + the path of auth.token_url"
    off = ""
    if settings is not None:
        listen = settings.listen
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        where = f"http://{host}:{listen.port}{settings.auth.token_url.path}"
        if not settings.local_tokens.enabled:
            off = " (set local_tokens.enabled: true first)"
    return (f"fwproxy: in an OAuth-aware tool{off}: client ID {name}, client secret the key "
            f"above, token URL {where}")


async def _fetch_token(settings: Settings, session: aiohttp.ClientSession) -> str:
    """A valid token: a stored one if the grant keeps any (user context), else a new one.
    With a fleet (state.backend: redis), a user's session is the fleet's."""
    if settings.auth.user_context and settings.state.shared:
        from .fleetsession import opened  # (redis-py: only for a fleet)

        async with opened(settings) as sessions:
            return (await make_grant(session, settings.auth, sessions).fetch()).value
    grant = make_grant(session, settings.auth)
    token = grant.stored() or await grant.fetch()
    return token.value


async def token(settings: Settings) -> int:
    """Print one access token on stdout and nothing else."""
    async with create_session(settings.tenant) as session:
        try:
            value = await _fetch_token(settings, session)
        except TokenError as exc:
            print(f"fwproxy: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(value)
    return EXIT_OK


async def check(settings: Settings) -> int:
    """Validate, get a token, call GET /fotoweb/me; print a short report."""
    print(f"config       {settings.source}: ok")
    for line in effective_config_lines(settings):
        print(f"  {line}")
    async with create_session(settings.tenant) as session:
        try:
            value = await _fetch_token(settings, session)
        except TokenError as exc:
            print(f"token        FAILED: {exc}")
            return EXIT_FAILED
        print("token        ok")
        url = settings.tenant.url.with_path("/fotoweb/me")
        try:
            with map_upstream_errors():
                async with session.get(
                    url,
                    headers={"Authorization": f"Bearer {value}", "Accept": "application/json"},
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    body = await read_limited(resp, 1024 * 1024)
        except UpstreamError as exc:
            print(f"/fotoweb/me  FAILED: {exc}")
            return EXIT_FAILED
        except TokenError as exc:  # an answer larger than read_limited allows
            print(f"/fotoweb/me  FAILED: {exc}")
            return EXIT_FAILED
    if status != 200:
        print(f"/fotoweb/me  FAILED: HTTP {status}")
        return EXIT_FAILED
    print(f"/fotoweb/me  ok: acting as {_user_name(body)}")
    return EXIT_OK


def _user_name(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return "(not JSON)"
    if isinstance(document, dict):
        return str(document.get("fullName") or document.get("userName") or "(no user name)")
    return "(unexpected answer)"


def demo(args: argparse.Namespace) -> int:
    """``fwproxy demo``. The simulator (fwproxy.sim) is imported here and nowhere else in
    the product, so ``fwproxy run`` never loads it."""
    from .sim.runner import demo as run_demo

    setup_logging(args.log_level or "info")
    written = Path(args.write_config) if args.write_config else None
    return eventloop.run(run_demo(args.port, args.tenant_port, args.token_lifetime, written),
                         "auto")
