"""README names metrics in "Operate it", "Protecting the tenant", "Use it from an
OAuth-aware tool" and "Running a fleet": every one of them is a family `/_fwproxy/metrics`
really serves."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ProxyFactory

ROOT = Path(__file__).parent.parent
NOT_METRICS = {"fwproxy_client_secret"}  # README's Docker secret's file name


def readme_metrics() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"\bfwproxy_[a-z_]*[a-z]\b", text)) - NOT_METRICS


async def test_every_metric_readme_names_is_served(make_proxy: ProxyFactory,
                                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    proxy = await make_proxy(local_tokens={"enabled": True},
                             auth={"token_store": str(state / "tokens.json")},
                             tenant={"max_in_flight": 4})
    fleet = await make_proxy(state={"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"})
    async with fleet.get("/_fwproxy/metrics") as resp:  # fwproxy_shared_state_*, Redis or not
        assert resp.status == 200
        served_by_fleet = set(re.findall(r"^# TYPE (\S+) ", await resp.text(), re.MULTILINE))
    async with proxy.get("/fotoweb/me") as resp:
        assert resp.status == 200
    async with proxy.get("/_fwproxy/metrics") as resp:
        assert resp.status == 200
        served = set(re.findall(r"^# TYPE (\S+) ", await resp.text(), re.MULTILINE))
    served |= served_by_fleet
    named = readme_metrics()
    assert len(named) >= 19  # the regex still finds README's metrics
    assert sorted(named - served) == []
