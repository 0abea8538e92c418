"""Fixture loading for the intake tests: published example payloads under ``data/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def raw(name: str) -> bytes:
    """A fixture's bytes exactly as stored (``github/push-tag-created.json``)."""
    return (DATA / name).read_bytes()


def document(name: str) -> dict[str, Any]:
    """A JSON fixture decoded, for tests that edit one field before encoding it again."""
    value = json.loads(raw(name))
    assert isinstance(value, dict)
    return value


def encode(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def fixtures(provider: str, suffix: str = ".json") -> list[str]:
    """Every fixture of one provider, as names relative to ``data/``."""
    return sorted(f"{provider}/{p.name}" for p in (DATA / provider).glob(f"*{suffix}"))
