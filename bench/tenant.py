"""The bench's tenant and what every contender shares: nginx over TLS with a CA made for the
run (a static token endpoint, a bearer check, a 1 KB JSON, a big file, an upload location
where nginx itself takes the body: WebDAV PUT into a tmpfs directory), the nginx and fwproxy
configs, and HTTP probes."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.processes import Sessions

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
FWPROXY = str(Path(sys.executable).parent / "fwproxy")
TOKEN = "bench-token"
JSON_PATH = "/fotoweb/bench/1k.json"
BIG_PATH = "/fotoweb/bench/big.bin"
UPLOAD_PATH = "/fotoweb/bench/upload"
MIB = 1 << 20


class Failed(Exception):
    """A contender did not work; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



# --- HTTP probes ---------------------------------------------------------------------------

def get_status(url: str, headers: dict[str, str], cafile: str | None, timeout: float = 5
               ) -> int:
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_200(url: str, headers: dict[str, str], cafile: str | None, sessions: Sessions,
             proc: subprocess.Popen[bytes] | None, started: float, limit: float = 60) -> float:
    """Poll until `url` answers 200; seconds since `started`. Raises Failed (with the tail of
    `proc`'s log)."""
    last = "no answer"
    while time.perf_counter() - started < limit:
        if proc is not None and proc.poll() is not None:
            raise Failed(f"exited with status {proc.returncode} before answering\n"
                         + sessions.log_tail(proc))
        try:
            status = get_status(url, headers, cafile, timeout=5)
            if status == 200:
                return time.perf_counter() - started
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.005)
    raise Failed(f"no 200 from {url} within {limit:g}s (last: {last})\n" + sessions.log_tail(proc))



# --- the tenant ----------------------------------------------------------------------------

def make_ca(work: Path) -> None:
    """A CA made for this run and a server certificate for 127.0.0.1 and localhost."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=work, check=True,  # noqa: S603, S607
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    (work / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
        "-subj", "/CN=fwproxy bench CA", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key")
    run("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "server.ext",
        "-out", "server.crt")


def put_root(work: Path) -> Path:
    """Where the tenant stores uploads (and buffers them on the way): a directory in tmpfs
    (/dev/shm) when there is one, so that no disk paces the upload figures; the run's
    scratch directory otherwise. The bench deletes each upload once it has checked it."""
    shm = Path("/dev/shm")  # noqa: S108 (a fresh directory of our own, 0700)
    base = work
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="fwproxy-bench-put-", dir=shm))
    root = base / "put"
    (root / "fotoweb" / "bench").mkdir(parents=True)
    (root / "tmp").mkdir()
    return root


def make_data(work: Path, size: int) -> Path:
    """Document root: the 1 KB JSON, /fotoweb/me, the big file (sparse); the upload file."""
    bench = work / "www" / "fotoweb" / "bench"
    bench.mkdir(parents=True)
    items: list[dict[str, str]] = []
    doc = ""
    while True:
        candidate = json.dumps({"data": items, "paging": None})
        if len(candidate) > 1024 - 40:
            break
        doc = candidate
        items.append({"href": f"/fotoweb/archives/{5000 + len(items)}/", "name": "Archive"})
    doc = doc[:-1] + ', "pad": "' + "x" * (1024 - len(doc) - 11) + '"}'
    assert len(doc) == 1024, len(doc)
    (bench / "1k.json").write_text(doc)
    (work / "www" / "fotoweb" / "me").write_text(
        json.dumps({"fullName": "Bench User", "userName": "bench"}))
    with open(bench / "big.bin", "wb") as f:
        f.truncate(size)
    upload = work / "upload.bin"
    with open(upload, "wb") as f:
        f.truncate(size)
    return upload


NGINX_COMMON = """\
{user}worker_processes {workers};
pid {work}/{name}.pid;
error_log {work}/logs/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {work}/tmp/{name}-body;
    proxy_temp_path {work}/tmp/{name}-proxy;
    fastcgi_temp_path {work}/tmp/{name}-fastcgi;
    uwsgi_temp_path {work}/tmp/{name}-uwsgi;
    scgi_temp_path {work}/tmp/{name}-scgi;
{body}
}}
"""

# The upload location: nginx takes the body itself (WebDAV PUT, into tmpfs, `put_root`), the
# fastest taker the machine has, so that the direct figure is not capped by a helper.
TENANT_BODY = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {work}/server.crt;
        ssl_certificate_key {work}/server.key;
        root {work}/www;
        location = /fotoweb/oauth2/token {{
            return 200 '{{"access_token":"{token}","token_type":"bearer","expires_in":3600}}';
        }}
        location = {upload} {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            root {puts};
            dav_methods PUT;
            client_max_body_size 0;
            client_body_buffer_size 1m;
            client_body_temp_path {puts}/tmp;
        }}
        location /fotoweb/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
        }}
    }}
"""

PROXY_BODY = """\
    upstream tenant {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass https://tenant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
            proxy_ssl_trusted_certificate {work}/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
"""


def nginx_conf(work: Path, name: str, body: str, **values: Any) -> Path:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    text = NGINX_COMMON.format(user=user, workers="auto", work=work, name=name,
                               body=body.format(work=work, token=TOKEN, upload=UPLOAD_PATH,
                                                **values))
    path = work / f"{name}.conf"
    path.write_text(text)
    return path


def nginx_argv(work: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(work), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]


def fwproxy_config(work: Path, name: str, port: int, tenant_port: int, workers: int = 0,
                   more: dict[str, dict[str, str]] | None = None) -> Path:
    """fwproxy's config for the bench; `more`: further keys by section (the variants)."""
    sections: dict[str, dict[str, str]] = {
        "listen": {"host": "127.0.0.1", "port": str(port)},
        "tenant": {"url": f"https://127.0.0.1:{tenant_port}", "ca_file": f"{work}/ca.crt"},
        "auth": {"client_id": "bench", "client_secret": "bench-secret"},
    }
    if workers:
        sections["listen"]["workers"] = str(workers)
    for section, keys in (more or {}).items():
        sections.setdefault(section, {}).update(keys)
    path = work / f"{name}.yaml"
    path.write_text("".join(f"{section}:\n" + "".join(f"  {k}: {v}\n" for k, v in keys.items())
                            for section, keys in sections.items()))
    path.chmod(0o600)  # fwproxy refuses an inline secret in a file others may read
    return path
