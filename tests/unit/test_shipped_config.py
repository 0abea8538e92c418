"""The files `make run` and the README rely on: config/triggerd.yaml and every BuildConfig
under config/ load, validate and round-trip, so a broken example fails here, not on a
user's first `make run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from triggerd import settings as settings_mod
from triggerd.model import buildconfigs

CONFIG = Path(__file__).parents[2] / "config"
BUILDCONFIG_FILES = sorted([*CONFIG.glob("buildconfigs/*.yaml"), *CONFIG.glob("examples/*.yaml")])


def test_make_run_settings_load() -> None:
    loaded = settings_mod.load(CONFIG / "triggerd.yaml", environ={})
    assert loaded.listen == "127.0.0.1:8080"
    # Paths in the file are relative to the file, not to where triggerd was started.
    assert loaded.data_dir.resolve() == (CONFIG.parent / "data").resolve()
    assert [p.resolve() for p in loaded.build_configs] == [(CONFIG / "buildconfigs").resolve()]
    assert loaded.registries["127.0.0.1:5000"].insecure is True


def test_every_shipped_buildconfig_file_is_listed() -> None:
    names = {p.relative_to(CONFIG).as_posix() for p in BUILDCONFIG_FILES}
    assert {"buildconfigs/hello.yaml", "buildconfigs/hello-binary.yaml"} <= names


@pytest.mark.parametrize("path", BUILDCONFIG_FILES, ids=lambda p: p.relative_to(CONFIG).as_posix())
def test_shipped_buildconfigs_validate_and_round_trip(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    for doc in docs:
        config = buildconfigs.parse(doc)
        again = buildconfigs.parse(config.to_dict())
        assert again.to_dict() == config.to_dict()
        assert again.spec == config.spec
