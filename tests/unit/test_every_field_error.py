"""Every reference and sub-object parser reports all of its errors at once.

A bad value in one field must not hide a bad value in a sibling field: the user fixes an
object in one round trip, as the 422 ``Status`` with all its causes promises.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import buildconfig_doc
from triggerd.errors import Invalid
from triggerd.model import buildconfigs


def causes(doc: Any) -> dict[str, str]:
    with pytest.raises(Invalid) as info:
        buildconfigs.parse(doc)
    return {c.path: c.message for c in info.value.causes}


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("Foo", "unsupported value 'Foo'"), ("ImageStreamImage", "not supported")],
)
def test_a_reference_with_a_bad_kind_and_no_name_names_both(kind: str, fragment: str) -> None:
    doc = buildconfig_doc()
    doc["spec"]["output"] = {"to": {"kind": kind, "name": ""}}
    found = causes(doc)
    assert fragment in found["spec.output.to.kind"], found
    assert found["spec.output.to.name"] == "is required"


def test_a_reference_with_a_bad_kind_and_a_name_names_the_kind_only() -> None:
    doc = buildconfig_doc()
    doc["spec"]["output"] = {"to": {"kind": "Foo", "name": "registry.example.com/a:b"}}
    assert set(causes(doc)) == {"spec.output.to.kind"}


def test_an_image_source_without_from_still_has_its_paths_checked() -> None:
    doc = buildconfig_doc()
    doc["spec"]["source"]["images"] = [
        {"paths": [{"sourcePath": "relative/path", "destinationDir": "../outside"}]}
    ]
    found = causes(doc)
    assert found["spec.source.images[0].from"] == "is required"
    assert "absolute" in found["spec.source.images[0].paths[0].sourcePath"]
    assert "spec.source.images[0].paths[0].destinationDir" in found


def test_a_secret_input_with_a_bad_name_still_has_its_destination_checked() -> None:
    doc = buildconfig_doc()
    doc["spec"]["source"]["secrets"] = [{"secret": {"name": "a/b"}, "destinationDir": "/abs"}]
    found = causes(doc)
    assert "plain name" in found["spec.source.secrets[0].secret.name"]
    assert "relative path" in found["spec.source.secrets[0].destinationDir"]


def test_a_volume_with_a_bad_source_still_has_its_mounts_checked() -> None:
    doc = buildconfig_doc()
    doc["spec"]["strategy"]["dockerStrategy"]["volumes"] = [
        {"name": "v", "source": {"type": "CSI"}, "mounts": [{"destinationPath": "relative"}]}
    ]
    found = causes(doc)
    vpath = "spec.strategy.dockerStrategy.volumes[0]"
    assert "unsupported value 'CSI'" in found[f"{vpath}.source.type"]
    assert "absolute path" in found[f"{vpath}.mounts[0].destinationPath"]


def test_a_source_strategy_without_from_still_has_its_other_fields_checked() -> None:
    doc = buildconfig_doc()
    doc["spec"]["strategy"] = {
        "type": "Source",
        "sourceStrategy": {"scripts": "ftp://example.com/s2i", "incremental": "yes"},
    }
    found = causes(doc)
    spath = "spec.strategy.sourceStrategy"
    assert "is required" in found[f"{spath}.from"]
    assert "unsupported URL" in found[f"{spath}.scripts"]
    assert found[f"{spath}.incremental"] == "must be a boolean"


def test_a_custom_strategy_without_from_still_has_its_secrets_checked() -> None:
    doc = buildconfig_doc()
    doc["spec"]["strategy"] = {
        "type": "Custom",
        "customStrategy": {"secrets": [{"secretSource": {"name": "s"}, "mountPath": "rel"}]},
    }
    found = causes(doc)
    cpath = "spec.strategy.customStrategy"
    assert "is required" in found[f"{cpath}.from"]
    assert "absolute path" in found[f"{cpath}.secrets[0].mountPath"]
