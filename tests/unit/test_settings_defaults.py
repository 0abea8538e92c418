"""The defaults ``triggerd serve`` runs with when its settings file leaves a key out."""

from __future__ import annotations

from pathlib import Path

import pytest

from triggerd import settings


@pytest.mark.parametrize("text", [None, "", "listen: 127.0.0.1:9000\ndataDir: d\n"])
def test_body_cap_and_concurrency_default_when_not_set(tmp_path: Path, text: str | None) -> None:
    path: Path | None = None
    if text is not None:
        path = tmp_path / "triggerd.yaml"
        path.write_text(text)
    # The loader `triggerd serve --config FILE` uses, with no TRIGGERD_* variables set.
    loaded = settings.load(path, environ={})
    # GitHub's maximum webhook payload: 25 MiB.
    assert loaded.max_body_bytes == 25 * 1024 * 1024
    assert loaded.max_concurrent_builds == 2
