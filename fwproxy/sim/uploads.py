"""The simulated tenant's upload service: a file in chunks becomes a new asset.

Theory of operation: ``POST /fotoweb/api/uploads`` (JSON: ``destination`` an archive URL,
``filename``, ``fileSize``, optional ``metadata`` as in an assetupdate) opens an upload
and answers ``{id, chunkSize, numChunks}`` (`Catalog.chunk_size`). Each chunk is ``POST
…/{id}/chunks/{i}`` as ``multipart/form-data`` with the bytes in the field ``chunk``, of
exactly ``chunkSize`` bytes (the last: the rest) -> ``204``; a chunk sent again replaces
itself. ``GET …/{id}/status`` says ``awaitingData`` (with the chunks still missing) until
every chunk is in, then ``done`` with the new asset (assets.py's entity), which is from
then on listed, searchable and has its renditions and previews like any other.
"""

from __future__ import annotations

import json
import secrets

from aiohttp import BodyPartReader, web

from .assets import entity
from .catalog import FIELDS, FILENAME, Asset, Upload, check_metadata
from .media import UPLOAD_INFO, UPLOAD_STATUS, answer, choose, error, not_found, require
from .state import TENANT

SERVICE = "/fotoweb/api/uploads"
MAX_FILE = 64 * 1024 * 1024


def add_routes(app: web.Application) -> None:
    app.router.add_post(SERVICE, start)
    app.router.add_post(SERVICE + r"/{id}/chunks/{index:\d+}", chunk)
    app.router.add_get(SERVICE + "/{id}/status", status)


async def start(request: web.Request) -> web.Response:
    require(request, "application/json")
    kind = choose(request, [UPLOAD_INFO])
    catalog = request.app[TENANT].catalog
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error(400, "bad_request", "the body is not JSON")
    if not isinstance(body, dict):
        return error(400, "bad_request", "the body must be an object")
    destination, filename, size = body.get("destination"), body.get("filename"), \
        body.get("fileSize")
    archive = next((a for a in catalog.archives.values() if a.href == destination), None)
    if archive is None:
        return error(400, "bad_request", "'destination' must be an archive's href")
    if not isinstance(filename, str) or not FILENAME.match(filename):
        return error(400, "bad_request", "'filename' must be a plain file name")
    if type(size) is not int or not 0 <= size <= MAX_FILE:
        return error(400, "bad_request", f"'fileSize' must be an integer 0..{MAX_FILE}")
    metadata = check_metadata({"metadata": body.get("metadata") or {}},
                              {fid: multi for fid, (_, multi, _) in FIELDS.items()})
    if isinstance(metadata, str):
        return error(400, "bad_request", metadata)
    upload = Upload(archive.id, filename, size, catalog.chunk_size, metadata)
    upload_id = secrets.token_hex(8)
    catalog.uploads[upload_id] = upload
    return answer({"id": upload_id, "chunkSize": upload.chunk_size,
                   "numChunks": upload.num_chunks}, kind)


def _upload(request: web.Request) -> Upload:
    upload = request.app[TENANT].catalog.uploads.get(request.match_info["id"])
    if upload is None:
        raise not_found("upload")
    return upload


async def chunk(request: web.Request) -> web.Response:
    upload = _upload(request)
    require(request, "multipart/form-data")
    index = int(request.match_info["index"])
    if index >= upload.num_chunks:
        return error(400, "bad_request", f"chunks are 0..{upload.num_chunks - 1}")
    if upload.asset is not None:
        return error(409, "conflict", "the upload is complete")
    data: bytes | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "chunk":
                data = bytes(await part.read())
    except ValueError as exc:
        return error(400, "bad_request", f"malformed multipart body: {exc}")
    if data is None:
        return error(400, "bad_request", "the multipart body has no field 'chunk'")
    if len(data) != upload.chunk_length(index):
        return error(400, "bad_request",
                     f"chunk {index} must be {upload.chunk_length(index)} bytes")
    upload.chunks[index] = data
    if len(upload.chunks) == upload.num_chunks:
        content = b"".join(upload.chunks[i] for i in range(upload.num_chunks))
        upload.asset = Asset(upload.destination, upload.filename, content, upload.metadata)
        request.app[TENANT].catalog.add(upload.asset)
    return web.Response(status=204)


async def status(request: web.Request) -> web.Response:
    upload = _upload(request)
    kind = choose(request, [UPLOAD_STATUS])
    if upload.asset is None:
        missing = [i for i in range(upload.num_chunks) if i not in upload.chunks]
        return answer({"status": "awaitingData", "missingChunks": missing}, kind)
    return answer({"status": "done", "asset": entity(upload.asset)}, kind)
