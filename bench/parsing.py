"""wrk's output and py-spy's raw stacks turned into figures (pure functions, and the
profile written as Markdown)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    result: dict[str, Any] = {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": to_ms(lat["50"]) if "50" in lat else None,
        "p99_ms": to_ms(lat["99"]) if "99" in lat else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0],
        "error": "",
    }
    if not result["requests"] or result["p99_ms"] is None:
        result["error"] = "no requests completed: " + out.strip()[-300:]
    elif result["non_2xx"] > 0.01 * result["requests"]:
        result["error"] = f"{result['non_2xx']} of {result['requests']} answers not 2xx"
    elif sum(result["socket_errors"]) > 0.01 * result["requests"]:
        result["error"] = f"socket errors {result['socket_errors']}"
    return result


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> self and total shares per function and per area."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    areas: dict[str, int] = {}
    areas_total: dict[str, int] = {}
    ours: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        leaf = short_frame(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
        for name in {short_frame(f) for f in frames}:
            total[name] = total.get(name, 0) + count
            if name.split("(", 1)[-1].startswith("fwproxy/"):
                ours[name] = ours.get(name, 0) + count
        area = frame_area(frames[-1])
        areas[area] = areas.get(area, 0) + count
        start = next((i + 1 for i, f in enumerate(frames) if f.startswith("Handle._run ")), 1)
        for name in {frame_area(f) for f in frames[start:]}:  # below the event loop
            areas_total[name] = areas_total.get(name, 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": k, "samples": v, "pct": 100 * v / samples} for k, v in rows]

    return {"samples": samples, "self": ranked(own), "total": ranked(total),
            "areas": ranked(areas), "areas_total": ranked(areas_total),
            "fwproxy_total": ranked(ours)}


def short_frame(frame: str) -> str:
    """'handle (fwproxy/proxy.py:97)' with site-packages and stdlib paths shortened."""
    match = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not match:
        return frame
    func, path = match.group(1), match.group(2)
    for marker in ("site-packages/", "/lib/python3.", ):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[1] if "/" in path else path
    path = path.replace(str(ROOT) + "/", "")
    return f"{func} ({path}:{match.group(3)})" if match.group(3) else f"{func} ({path})"


def frame_area(frame: str) -> str:
    """The package a frame belongs to (TLS: the ssl module and asyncio's sslproto)."""
    checks = [("fwproxy/", "fwproxy"), ("aiohttp/", "aiohttp"), ("multidict/", "multidict"),
              ("yarl/", "yarl"), ("prometheus_client/", "prometheus_client"),
              ("logging/", "logging"), ("sslproto.py", "ssl"), ("ssl.py", "ssl"),
              ("asyncio/", "asyncio")]
    for needle, name in checks:
        if needle in frame:
            return name
    return "other"


def write_profile(summary: dict[str, Any], label: str, path: Path) -> None:
    lines = [f"# {label} under wrk ({summary['wrk_rps_while_profiling']:.0f} req/s): py-spy, "
             f"{summary['samples']} samples in {summary['seconds']} s at 200 Hz "
             "(idle samples left out)", ""]
    for title, key in (("By package, own time (the innermost frame's package)", "areas"),
                       ("By package, total time (the package anywhere on the stack)",
                        "areas_total"),
                       ("Own time (innermost frame)", "self"),
                       ("fwproxy's functions, total time", "fwproxy_total"),
                       ("Total time (frame anywhere on the stack)", "total")):
        lines += [f"## {title}", "", "| % | samples | function |", "|---:|---:|---|"]
        lines += [f"| {row['pct']:.1f} | {row['samples']} | `{row['function']}` |"
                  for row in summary[key]]
        lines.append("")
    path.write_text("\n".join(lines))


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


