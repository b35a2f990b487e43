"""The simulated tenant's rendition service: ask for a rendition, poll it, fetch its bytes.

Theory of operation: ``POST /fotoweb/services/renditions`` with a ``rendition-request``
(``{"href": <a rendition href of an asset>}``) creates a task and answers ``202
Accepted`` with a ``Location`` (and ``href``) to poll. The task answers ``202`` while
"preparing" - for `Catalog.rendition_polls` polls - then ``200`` with the rendition's
bytes (the original file, as ``Content-Disposition: attachment``), as often as asked.
FotoWeb cleans tasks up after a while; the hook ``POST /sim/renditions/expire`` (hooks.py)
does it at once, and a cleaned-up task answers ``410 Gone``. An unknown task is 404.
"""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from .catalog import Catalog, RenditionTask
from .media import RENDITION_REQUEST, RENDITION_RESPONSE, answer, choose, error, require
from .state import TENANT

SERVICE = "/fotoweb/services/renditions"


def add_routes(app: web.Application) -> None:
    app.router.add_post(SERVICE, request_rendition)
    app.router.add_get(SERVICE + "/{task}", poll)


def find(catalog: Catalog, href: str) -> RenditionTask | None:
    """A new task for the rendition `href` names, or None if it names none."""
    for assets in catalog.assets.values():
        for asset in assets:
            if asset.rendition_href == href:
                return RenditionTask(asset, catalog.rendition_polls)
    return None


def expire_all(catalog: Catalog) -> int:
    """Clean every task up (they answer 410 from now on); how many were live."""
    live = [task for task in catalog.tasks.values() if not task.gone]
    for task in live:
        task.gone = True
    return len(live)


async def request_rendition(request: web.Request) -> web.Response:
    require(request, RENDITION_REQUEST)
    kind = choose(request, [RENDITION_RESPONSE])
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error(400, "bad_request", "the body is not JSON")
    href = body.get("href") if isinstance(body, dict) else None
    catalog = request.app[TENANT].catalog
    task = find(catalog, href) if isinstance(href, str) else None
    if task is None:
        return error(400, "bad_request", "'href' must name a rendition of an asset")
    task_id = secrets.token_hex(8)
    catalog.tasks[task_id] = task
    location = f"{SERVICE}/{task_id}"
    return answer({"href": location}, kind, status=202, headers={"Location": location})


async def poll(request: web.Request) -> web.Response:
    task = request.app[TENANT].catalog.tasks.get(request.match_info["task"])
    if task is None:
        return error(404, "not_found", "no such rendition task")
    if task.gone:
        return error(410, "gone", "the rendition was cleaned up; request it again")
    if task.polls_left > 0:
        task.polls_left -= 1
        return web.json_response({"status": "preparing"}, status=202,
                                 headers={"Retry-After": "0"})
    return web.Response(body=task.asset.content, content_type="application/octet-stream",
                        headers={"Content-Disposition":
                                 f'attachment; filename="{task.asset.filename}"'})
