"""(c) mitmproxy addon: add the bearer token to every request (reverse mode).

``requestheaders`` rather than ``request``: with ``stream_large_bodies`` a big body is
streamed, and ``request`` would only run after it has gone.

    mitmdump --mode reverse:https://127.0.0.1:8443@8082 --ssl-insecure -s bench/mitm_addon.py
"""

import os

TOKEN = os.environ.get("BENCH_TOKEN", "bench-token")


class AddToken:
    def requestheaders(self, flow):  # type: ignore[no-untyped-def]
        flow.request.headers["Authorization"] = f"Bearer {TOKEN}"


addons = [AddToken()]
