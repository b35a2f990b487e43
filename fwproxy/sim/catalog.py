"""The simulated tenant's catalogue: seeded archives and assets, rendition tasks, uploads.

Theory of operation: `Catalog.seeded()` builds the same data every time - three archives,
25 photos in "Photos" (so its listing and a search for ``norway`` take three pages of
`page_size` 10), three logos, two documents - with known bytes per asset. The only
randomness is each asset's ``previewToken`` (a secret: it opens that asset's previews and
nothing else). `TenantState.catalog` holds one; the handlers of api.py, assets.py,
renditions.py and uploads.py read and change it, tests flip its switches
(`page_size`, `rendition_polls`, `chunk_size`) and read it back. Nothing here knows HTTP;
everything that decides (`matches`, `page_of`, `parse_listing`) is a pure function.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

# Metadata fields of the archives' editor: id -> (label, multi-valued, builtin name)
FIELDS: dict[str, tuple[str, bool, str | None]] = {
    "5": ("Title", False, "title"),
    "25": ("Keywords", True, "tags"),
    "80": ("Byline", False, None),
    "120": ("Description", False, "description"),
}
PREVIEW_SIZES = (200, 800)
FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUBJECTS = ("sea", "forest", "city", "mountain", "harbour")
Value = str | list[str]


@dataclass(frozen=True)
class Archive:
    id: str
    name: str
    description: str

    @property
    def href(self) -> str:
        return f"/fotoweb/archives/{self.id}/"


@dataclass
class Asset:
    archive: str
    filename: str
    content: bytes
    metadata: dict[str, Value]
    preview_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @property
    def href(self) -> str:
        return f"/fotoweb/archives/{self.archive}/Assets/{self.filename}.info"

    @property
    def rendition_href(self) -> str:
        return self.href + "/__renditions/ORIGINAL"

    def preview_href(self, size: int) -> str:
        return f"/fotoweb/previews/{self.archive}/{self.filename}/{size}.jpg"


@dataclass
class RenditionTask:
    asset: Asset
    polls_left: int
    gone: bool = False


@dataclass
class Upload:
    destination: str  # archive id
    filename: str
    size: int
    chunk_size: int
    metadata: dict[str, Value]
    chunks: dict[int, bytes] = field(default_factory=dict)
    asset: Asset | None = None

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def chunk_length(self, index: int) -> int:
        """The exact length chunk `index` must have."""
        return min(self.chunk_size, self.size - index * self.chunk_size) if self.size else 0


def known_bytes(name: str, size: int) -> bytes:
    """`size` deterministic bytes for a seeded file, starting like a JPEG."""
    seed = hashlib.sha256(name.encode()).digest()
    return (b"\xff\xd8\xff\xe0" + seed * (size // len(seed) + 1))[:size]


def preview_bytes(asset: Asset, size: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + f"preview {size}px of {asset.href}".encode()


@dataclass
class Catalog:
    archives: dict[str, Archive]
    assets: dict[str, list[Asset]]  # per archive, in filename order
    page_size: int = 10
    rendition_polls: int = 2  # polls answered "202 preparing" before the bytes
    chunk_size: int = 64 * 1024
    tasks: dict[str, RenditionTask] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)

    @classmethod
    def seeded(cls) -> Catalog:
        archives = [Archive("5000", "Photos", "Photographs of Norway"),
                    Archive("5001", "Logos", "Brand assets"),
                    Archive("5002", "Documents", "Press kits")]
        photos = [
            Asset("5000", f"photo-{i:03}.jpg", known_bytes(f"photo-{i:03}.jpg", 3000 + 97 * i),
                  {"5": f"{SUBJECTS[i % 5].title()} no. {i}", "80": "Ola Nordmann",
                   "25": ["norway", SUBJECTS[i % 5]],
                   "120": f"A {SUBJECTS[i % 5]} in Norway, picture {i}"})
            for i in range(1, 26)
        ]
        logos = [Asset("5001", f"logo-{c}.png", known_bytes(f"logo-{c}.png", 1200),
                       {"5": f"Logo {c}", "25": ["logo", c]}) for c in ("blue", "red", "mono")]
        docs = [Asset("5002", f"{n}.pdf", known_bytes(f"{n}.pdf", 5000),
                      {"5": n.replace("-", " ").title(), "25": ["press"]})
                for n in ("press-kit", "fact-sheet")]
        return cls({a.id: a for a in archives},
                   {"5000": photos, "5001": logos, "5002": docs})

    def asset(self, archive: str, filename: str) -> Asset | None:
        for asset in self.assets.get(archive, []):
            if asset.filename == filename:
                return asset
        return None

    def add(self, asset: Asset) -> None:
        listed = [a for a in self.assets[asset.archive] if a.filename != asset.filename]
        self.assets[asset.archive] = sorted([*listed, asset], key=lambda a: a.filename)

    def search(self, archive: str, q: str) -> list[Asset]:
        return [asset for asset in self.assets.get(archive, []) if matches(asset, q)]


def matches(asset: Asset, q: str) -> bool:
    """Every word of `q` occurs (case-insensitively) in the filename or a field value."""
    values = [asset.filename]
    for value in asset.metadata.values():
        values.extend(value if isinstance(value, list) else [value])
    text = "\n".join(values).lower()
    return all(word in text for word in q.lower().split())


def parse_listing(params: str) -> tuple[str, int] | None:
    """``;o=+;p=2`` (FotoWeb's listing parameters) -> (order, page); None if malformed."""
    order, page = "+", 0
    for param in params.split(";")[1:]:
        name, sep, value = param.partition("=")
        if name == "o" and value in ("+", "-", " "):  # a raw + may arrive decoded as space
            order = "-" if value == "-" else "+"
        elif name == "p" and sep and value.isdigit() and len(value) < 7:
            page = int(value)
        else:
            return None
    return order, page


def listing_url(archive: str, order: str, page: int, q: str) -> str:
    query = f"?q={quote(q, safe='')}" if q else ""
    return f"/fotoweb/archives/{archive}/;o={order};p={page}{query}"


def page_of(count: int, page: int, size: int) -> tuple[int, int] | None:
    """The slice [start, stop) of page `page`, or None past the last page (page 0 always
    exists, empty when there is nothing)."""
    start = page * size
    if page > 0 and start >= count:
        return None
    return start, min(start + size, count)


def check_metadata(update: object, multi: dict[str, bool]) -> dict[str, Value] | str:
    """An assetupdate's ``metadata`` checked against the editor's fields: the new values,
    or why not."""
    if not isinstance(update, dict) or not isinstance(update.get("metadata"), dict):
        return "the body must be an object with a 'metadata' object"
    values: dict[str, Value] = {}
    for field_id, entry in update["metadata"].items():
        if field_id not in multi:
            return f"unknown metadata field {field_id!r}"
        value = entry.get("value") if isinstance(entry, dict) else None
        if multi[field_id]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return f"field {field_id} takes a list of strings as 'value'"
        elif not isinstance(value, str):
            return f"field {field_id} takes a string as 'value'"
        values[field_id] = value
    return values
