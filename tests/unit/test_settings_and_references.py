"""Settings from YAML and TRIGGERD_* variables; image reference normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from triggerd import settings
from triggerd.errors import Invalid
from triggerd.images import references


def test_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_text(
        "listen: 127.0.0.1:9000\ndataDir: d\nmaxConcurrentBuilds: 4\n"
        "registries: {'127.0.0.1:5000': {insecure: true}}\nimagePollInterval: 1m30s\n"
    )
    loaded = settings.load(
        path, environ={"TRIGGERD_MAX_CONCURRENT_BUILDS": "7", "TRIGGERD_API_TOKENS": "a,b"}
    )
    assert loaded.port == 9000
    assert loaded.data_dir == tmp_path / "d"
    assert loaded.max_concurrent_builds == 7
    assert loaded.api_tokens == ("a", "b")
    assert loaded.registry("127.0.0.1:5000").insecure is True
    assert loaded.image_poll_interval_seconds == 90.0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("maxConcurrentBuilds: 0\n", "maxConcurrentBuilds"),
        ("bogus: 1\n", "bogus"),
        ("imagePollInterval: soon\n", "imagePollInterval"),
        ("registries: {h: {insecure: maybe}}\n", "registries"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(Invalid) as info:
        settings.load(path, environ={})
    assert field in {c.path for c in info.value.causes}


def test_env_name() -> None:
    assert settings.env_name("maxConcurrentBuilds") == "TRIGGERD_MAX_CONCURRENT_BUILDS"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("team/app:v1", "docker.io/team/app:v1"),
        ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
        ("localhost/x", "localhost/x:latest"),
        ("quay.io/a/b@sha256:" + "a" * 64, "quay.io/a/b@sha256:" + "a" * 64),
        ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3"),
    ],
)
def test_references(text: str, expected: str) -> None:
    assert str(references.parse(text)) == expected


@pytest.mark.parametrize("text", ["", "UPPER/x", "a/b:bad tag", "a@sha256:zz", " x"])
def test_bad_references(text: str) -> None:
    with pytest.raises(ValueError):
        references.parse(text)
