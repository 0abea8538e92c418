"""The host executor's layer cache bookkeeping: when builds last used each image of the
buildah storage, and how much disk the storage takes, for pruning by the
``layerCacheMaxAge``/``layerCacheMaxBytes`` settings (:mod:`triggerd.executors.local`
removes the images this module picks).

Age is counted from an image's last use by a build, never from its ``created`` date: that
is the upstream build date of a pulled base image (often months old) and would prune it the
moment it is pulled. A build's use is learned from what buildah prints (``--> Using cache
<id>``, ``--> <id>`` for each committed step) and the image it produced, widened to every
image on the same layer chain (its base image and the intermediate images of its steps),
and recorded by touching ``<records>/<image id>``. An image no build has used yet counts
from when it arrived in the local storage: its directory there (containers/storage's
``created`` is the image's own date for a pulled image).

The images and their layers are read from containers/storage's metadata
(``<root>/<driver>-images/images.json``, ``<root>/<driver>-layers/layers.json``), which
buildah's commands do not show; its disk use is measured once per prune, per layer
directory, and what a removal freed is the layer directories that are gone afterwards.

File I/O only (no processes): local.py runs buildah.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: Image ids buildah build prints: ``--> Using cache <64 hex>`` and ``--> <11+ hex>``.
_IMAGE_ID_LINE = re.compile(rb"^--> (?:Using cache )?([0-9a-f]{11,64})\s*$")
_ID_LENGTH = 64


class OutputTap:
    """Collects the image ids a build's buildah output names, line by line."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def feed(self, line: bytes) -> None:
        if line.startswith(b"--> "):
            match = _IMAGE_ID_LINE.match(line)
            if match:
                self.ids.add(match.group(1).decode())


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    layer: str  # the top layer
    arrived: float  # when it was pulled or committed into this storage (epoch seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class Storage:
    """What containers/storage holds: images and the layer tree."""

    images: Mapping[str, Image]
    parents: Mapping[str, str]  # layer → parent layer

    def resolve(self, ids: Iterable[str]) -> set[str]:
        """Full image ids for ids or their prefixes (buildah prints 11 characters)."""
        found: set[str] = set()
        for given in ids:
            ident = given.removeprefix("sha256:")
            if len(ident) == _ID_LENGTH:
                if ident in self.images:
                    found.add(ident)
                continue
            found.update(i for i in self.images if i.startswith(ident))
        return found

    def chain(self, image_ids: Iterable[str]) -> set[str]:
        """Every image whose top layer is on the layer chain of one of ``image_ids``: the
        images themselves, their base images and the intermediate images of their steps."""
        layers: set[str] = set()
        for image_id in image_ids:
            layer: str | None = self.images[image_id].layer
            while layer and layer not in layers:
                layers.add(layer)
                layer = self.parents.get(layer)
        return {i for i, image in self.images.items() if image.layer in layers}


def read_storage(root: Path, driver: str) -> Storage | None:
    """The storage's images and layers, or None when its metadata cannot be read."""
    try:
        images_doc = _read_json(root / f"{driver}-images" / "images.json")
        layers_doc = _read_json(root / f"{driver}-layers" / "layers.json")
        volatile = root / f"{driver}-layers" / "volatile-layers.json"
        if volatile.exists():
            layers_doc = [*layers_doc, *_read_json(volatile)]
        images = {
            str(doc["id"]): Image(
                layer=str(doc.get("layer", "")),
                arrived=_arrival(root / f"{driver}-images" / str(doc["id"]), doc),
            )
            for doc in images_doc
        }
        parents = {str(doc["id"]): str(doc["parent"]) for doc in layers_doc if doc.get("parent")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Storage(images=images, parents=parents)


def _read_json(path: Path) -> list[dict[str, object]]:
    doc = json.loads(path.read_text(encoding="utf-8") or "[]")
    if not isinstance(doc, list):
        raise ValueError(f"{path}: not a list")
    return [d for d in doc if isinstance(d, dict)]


def _arrival(directory: Path, doc: Mapping[str, object]) -> float:
    """When the image came into the storage: its directory's time (written once, when it
    is pulled or committed), else the metadata's ``created``."""
    try:
        return directory.stat().st_mtime
    except OSError:
        return _epoch(doc)


def _epoch(doc: Mapping[str, object]) -> float:
    """containers/storage's ``created`` (RFC 3339 with nanoseconds) as epoch seconds."""
    text = str(doc.get("created") or "")
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return 0.0
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone).timestamp()


class UseRecords:
    """``<directory>/<image id>``, whose modification time is the image's last use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def touch(self, image_ids: Iterable[str], now: float | None = None) -> None:
        moment = time.time() if now is None else now
        self.directory.mkdir(parents=True, exist_ok=True)
        for image_id in image_ids:
            path = self.directory / image_id
            path.touch()
            os.utime(path, (moment, moment))

    def last_use(self, storage: Storage) -> dict[str, float]:
        """Each image's last use: its record, or when it arrived in the storage if later."""
        recorded: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                with contextlib.suppress(FileNotFoundError):
                    recorded[entry.name] = entry.stat().st_mtime
        return {
            image_id: max(recorded.get(image_id, 0.0), image.arrived)
            for image_id, image in storage.images.items()
        }

    def forget_except(self, image_ids: Iterable[str]) -> None:
        """Drop the records of images the storage no longer has."""
        keep = set(image_ids)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


def layers_dir(root: Path, driver: str) -> Path:
    """Where a storage driver keeps one directory per layer."""
    return root / "vfs" / "dir" if driver == "vfs" else root / driver


class Usage:
    """The storage's disk use, measured once: per layer directory, plus everything else;
    :meth:`refresh` subtracts the layers that are gone since."""

    def __init__(self, root: Path, driver: str) -> None:
        self.layers_root = layers_dir(root, driver)
        self.per_layer: dict[str, int] = {}
        self.other = 0
        seen: set[tuple[int, int]] = set()
        for dirpath, _, filenames in os.walk(root):
            layer = self._layer_of(Path(dirpath))
            for name in filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue  # hard links count once
                seen.add((st.st_dev, st.st_ino))
                if layer is None:
                    self.other += st.st_size
                else:
                    self.per_layer[layer] = self.per_layer.get(layer, 0) + st.st_size

    def _layer_of(self, directory: Path) -> str | None:
        try:
            relative = directory.relative_to(self.layers_root)
        except ValueError:
            return None
        return relative.parts[0] if relative.parts else None

    @property
    def total(self) -> int:
        return self.other + sum(self.per_layer.values())

    def refresh(self) -> int:
        """The total once the layer directories removed since are subtracted."""
        for layer in [k for k in self.per_layer if not (self.layers_root / k).exists()]:
            del self.per_layer[layer]
        return self.total
