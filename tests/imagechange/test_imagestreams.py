"""ImageStream model and its SQLite store: validation paths, history, trigger states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.imagechange.helpers import DIGEST_A, DIGEST_B
from triggerd.errors import AlreadyExists, Conflict, Invalid, NotFound
from triggerd.imagechange import TriggerState
from triggerd.images.streams_store import StreamsStore
from triggerd.model import imagestreams

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stream_doc(name: str = "base", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": name, "namespace": "team"},
        "spec": spec
        or {
            "tags": [
                {
                    "name": "latest",
                    "from": {"kind": "DockerImage", "name": "busybox"},
                    "importPolicy": {"scheduled": True, "pollInterval": "30s"},
                }
            ]
        },
    }


def test_parse_reads_tags_and_import_policy() -> None:
    stream = imagestreams.parse(stream_doc())
    (tag,) = stream.tags
    assert tag.name == "latest"
    assert tag.scheduled
    assert tag.interval == 30.0
    assert tag.from_ref is not None and tag.from_ref.name == "busybox"


def test_parse_reports_every_bad_field() -> None:
    doc = stream_doc(
        tags=[
            {"name": "a", "importPolicy": {"scheduled": True}},
            {"name": "a", "from": {"kind": "ImageStreamTag", "name": "x:y"}},
            {"name": "bad tag!"},
        ]
    )
    with pytest.raises(Invalid) as info:
        imagestreams.parse(doc)
    paths = sorted(c.path for c in info.value.causes)
    assert paths == [
        "spec.tags[0].importPolicy.scheduled",
        "spec.tags[1].from.kind",
        "spec.tags[1].name",
        "spec.tags[2].name",
    ]


def test_record_keeps_newest_first_and_skips_repeats() -> None:
    stream = imagestreams.parse(stream_doc())
    first = imagestreams.TagEvent(
        docker_image_reference=f"r/x@{DIGEST_A}", image=DIGEST_A, created=T0
    )
    second = imagestreams.TagEvent(
        docker_image_reference=f"r/x@{DIGEST_B}", image=DIGEST_B, created=T0 + timedelta(1)
    )
    stream, changed = imagestreams.record(stream, "latest", first)
    assert changed
    stream, changed = imagestreams.record(stream, "latest", first)
    assert not changed
    stream, changed = imagestreams.record(stream, "latest", second)
    assert [i.image for i in stream.history["latest"]] == [DIGEST_B, DIGEST_A]
    assert [i.generation for i in stream.history["latest"]] == [2, 1]
    doc = stream.to_dict("127.0.0.1:5000")
    assert doc["status"]["dockerImageRepository"] == "127.0.0.1:5000/team/base"
    assert doc["status"]["tags"][0]["items"][0]["image"] == DIGEST_B
    # The serialised form parses back to the same history.
    assert imagestreams.parse(doc).history == stream.history


async def test_store_crud_history_and_trigger_states(tmp_path: Path) -> None:
    store = StreamsStore(tmp_path / "streams.db")
    await store.open()
    try:
        created = await store.create_stream(imagestreams.parse(stream_doc()), now=T0)
        assert created.meta.resource_version == "1" and created.meta.uid
        with pytest.raises(AlreadyExists):
            await store.create_stream(imagestreams.parse(stream_doc()), now=T0)
        event = imagestreams.TagEvent(
            docker_image_reference="r@" + DIGEST_A, image=DIGEST_A, created=T0
        )
        stream, changed = await store.record_tag("team", "base", "latest", event)
        assert changed and stream.latest("latest") is not None
        _, again = await store.record_tag("team", "base", "latest", event)
        assert not again
        # A replace with a stale version conflicts; a fresh one keeps the history.
        with pytest.raises(Conflict):
            await store.replace_stream(created, expected_resource_version="1")
        replaced = await store.replace_stream(imagestreams.parse(stream_doc(tags=[])))
        assert replaced.tags == () and replaced.latest("latest") is not None
        await store.put_trigger_states(
            "team",
            "app",
            [TriggerState(index=0, last_triggered_image_id="x", last_trigger_time=T0)],
        )
        states = await store.trigger_states("team", "app")
        assert states[0].last_triggered_image_id == "x"
        assert states[0].last_trigger_time == T0
        await store.delete_stream("team", "base")
        with pytest.raises(NotFound):
            await store.get_stream("team", "base")
    finally:
        await store.close()
    # Durable across reopen.
    reopened = StreamsStore(tmp_path / "streams.db")
    await reopened.open()
    try:
        assert (await reopened.trigger_states("team", "app"))[0].last_triggered_image_id == "x"
    finally:
        await reopened.close()
