"""The simulated tenant's registrations (fwproxy/sim/state.py), as README tells users."""

from __future__ import annotations

from pathlib import Path

from fwproxy.sim import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_NATIVE_CLIENT,
    DEMO_PASSWORD,
    DEMO_REDIRECT,
    DEMO_USER,
    DEMO_WEB_CLIENT,
    DEMO_WEB_SECRET,
    default_apps,
)


def test_readme_gives_the_demo_tenants_credentials() -> None:
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text(encoding="utf-8")
    for value in (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USER, DEMO_PASSWORD,
                  DEMO_WEB_CLIENT, DEMO_WEB_SECRET, DEMO_NATIVE_CLIENT, DEMO_REDIRECT):
        assert f"`{value}`" in readme
    assert DEMO_NATIVE_CLIENT in default_apps()
    assert default_apps()[DEMO_NATIVE_CLIENT].public
    assert {DEMO_REDIRECT} == {uri for app in default_apps().values()
                               for uri in app.redirect_uris}
