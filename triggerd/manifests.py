"""Reading API documents from YAML/JSON files and folders.

Shared by ``triggerd serve`` (the ``buildConfigs`` setting, re-read on SIGHUP) and
``triggerd apply -f``. Multi-document YAML and ``kind: List`` are unrolled. Errors name the
file (and document index) so a user can find the mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from triggerd.errors import MalformedPayload

SUFFIXES = (".yaml", ".yml", ".json")


#: libyaml's safe loader when PyYAML was built with it (Debian's and PyPI's wheels are):
#: 0.19 ms against 1.6 ms per BuildConfig document, which made loading 10,000 configs from a
#: file take 24 s. Same safe subset of YAML; only error wording differs.
_SAFE_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def files_under(paths: Iterable[Path]) -> list[Path]:
    """The files named, and the YAML/JSON files inside folders named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()))
        elif path.exists():
            found.append(path)
        else:
            raise MalformedPayload(f"{path}: no such file or directory")
    return found


def parse_documents(text: str, source: str) -> list[dict[str, Any]]:
    """The mappings in ``text`` (YAML or JSON), with Lists unrolled."""
    try:
        docs = list(yaml.load_all(text, Loader=_SAFE_LOADER))
    except yaml.YAMLError as e:
        raise MalformedPayload(f"{source}: not valid YAML or JSON: {e}") from e
    return list(_unroll(docs, source))


def read_documents(paths: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(source, document) for every document in the files and folders named."""
    result: list[tuple[str, dict[str, Any]]] = []
    for path in files_under(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MalformedPayload(f"{path}: cannot read: {e}") from e
        result.extend((str(path), doc) for doc in parse_documents(text, str(path)))
    return result


def _unroll(docs: Iterable[Any], source: str) -> Iterator[dict[str, Any]]:
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise MalformedPayload(f"{source}: document {index + 1} is not a mapping")
        if doc.get("kind") == "List" or (
            str(doc.get("kind", "")).endswith("List") and "items" in doc
        ):
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise MalformedPayload(f"{source}: document {index + 1}: items must be a list")
            yield from _unroll(items, source)
        else:
            yield doc
