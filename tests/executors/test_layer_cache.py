"""The layer cache bookkeeping on its own: image ids read from buildah's output, the
storage metadata and layer chains, last-use records, disk use measured once."""

from __future__ import annotations

import json
import os
from pathlib import Path

from triggerd.executors import layer_cache

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def write_storage(root: Path) -> None:
    """Base image A (layer 1), its build's step B (layer 2 on 1) and result C (layer 3 on
    2); D (layer 4) unrelated. Created dates as containers/storage writes them."""
    (root / "vfs-images").mkdir(parents=True)
    (root / "vfs-layers").mkdir(parents=True)
    images = [
        {"id": A, "layer": "l1", "created": "2026-01-01T00:00:00.123456789Z"},
        {"id": B, "layer": "l2", "created": "2026-01-02T00:00:00Z"},
        {"id": C, "layer": "l3", "created": "2026-01-03T00:00:00+01:00"},
        {"id": D, "layer": "l4", "created": "2026-01-04T00:00:00Z"},
    ]
    layers = [
        {"id": "l1"},
        {"id": "l2", "parent": "l1"},
        {"id": "l3", "parent": "l2"},
        {"id": "l4"},
    ]
    (root / "vfs-images" / "images.json").write_text(json.dumps(images))
    # A's directory says when it was pulled (its created date is the upstream one).
    (root / "vfs-images" / A).mkdir()
    os.utime(root / "vfs-images" / A, (1_800_000_000.0, 1_800_000_000.0))
    (root / "vfs-layers" / "layers.json").write_text(json.dumps(layers))
    for layer, size in (("l1", 1000), ("l2", 200), ("l3", 30), ("l4", 4000)):
        directory = root / "vfs" / "dir" / layer
        directory.mkdir(parents=True)
        (directory / "file").write_bytes(bytes(size))
    (root / "vfs" / "dir" / "l1" / "hardlink").hardlink_to(root / "vfs" / "dir" / "l1" / "file")
    (root / "storage.lock").write_bytes(bytes(5))


def test_output_tap_collects_the_image_ids_buildah_prints() -> None:
    tap = layer_cache.OutputTap()
    for line in (
        b"[1/2] STEP 2/2: RUN echo a > /a\n",
        b"--> 7b87bc4d733\n",
        b"--> Using cache " + C.encode() + b"\n",
        b"--> FetchInputs: create directory tmp\n",  # triggerd's own step lines
        b"--> Pushed 127.0.0.1:5000/x:v1@sha256:" + D.encode() + b"\n",
    ):
        tap.feed(line)
    assert tap.ids == {"7b87bc4d733", C}


def test_storage_chains_and_ages(tmp_path: Path) -> None:
    write_storage(tmp_path)
    storage = layer_cache.read_storage(tmp_path, "vfs")
    assert storage is not None
    assert storage.images[A].arrived == 1_800_000_000.0
    assert storage.images[B].arrived == 1767312000.0
    assert storage.images[C].arrived == 1767394800.0  # +01:00, no directory: created
    assert storage.resolve(["c" * 11, f"sha256:{B}", "e" * 11]) == {B, C}
    # The result's chain holds its step and its base image, not the unrelated image.
    assert storage.chain({C}) == {A, B, C}
    assert storage.chain({A}) == {A}
    assert layer_cache.read_storage(tmp_path / "missing", "vfs") is None


def test_use_records_outlive_nothing_and_beat_the_arrival_time(tmp_path: Path) -> None:
    write_storage(tmp_path)
    storage = layer_cache.read_storage(tmp_path, "vfs")
    assert storage is not None
    records = layer_cache.UseRecords(tmp_path / "uses")
    assert records.last_use(storage)[A] == storage.images[A].arrived  # no record yet
    records.touch([A, B], now=1_900_000_000.0)
    uses = records.last_use(storage)
    assert uses[A] == uses[B] == 1_900_000_000.0
    assert uses[D] == storage.images[D].arrived
    records.forget_except([B, C, D])
    assert sorted(os.listdir(tmp_path / "uses")) == [B]


def test_usage_is_measured_once_and_refreshed_by_the_layers_gone(tmp_path: Path) -> None:
    write_storage(tmp_path)
    usage = layer_cache.Usage(tmp_path, "vfs")
    assert usage.per_layer == {"l1": 1000, "l2": 200, "l3": 30, "l4": 4000}  # hard link once
    other = usage.other
    assert other > 5  # the metadata and the lock file
    for name in ("file",):
        (tmp_path / "vfs" / "dir" / "l4" / name).unlink()
    (tmp_path / "vfs" / "dir" / "l4").rmdir()
    assert usage.refresh() == other + 1230
