"""The pure image change decision: which triggers fire, one build, pinning, states, cycles."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.imagechange.helpers import (
    DIGEST_A,
    DIGEST_B,
    docker_ref,
    image_config,
    istag,
)
from triggerd import imagechange
from triggerd.errors import Invalid
from triggerd.imagechange import TriggerState
from triggerd.model import buildconfigs
from triggerd.model.specs import ReferenceKind

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE = "127.0.0.1:5000/team/base:latest"
BASE_KEY = "127.0.0.1:5000/team/base:latest"
PINNED_A = f"127.0.0.1:5000/team/base@{DIGEST_A}"
PINNED_B = f"127.0.0.1:5000/team/base@{DIGEST_B}"


def test_empty_from_watches_the_strategy_from() -> None:
    config = image_config(base=docker_ref(BASE))
    (watched,) = imagechange.watched_images(config)
    assert watched.key == BASE_KEY
    assert watched.is_strategy_from
    assert watched.index == 0


def test_docker_hub_short_names_are_normalised() -> None:
    config = image_config(base=docker_ref("busybox"))
    (watched,) = imagechange.watched_images(config)
    assert watched.key == "docker.io/library/busybox:latest"


def test_first_resolution_builds_once_pinned_to_the_digest() -> None:
    config = image_config(base=docker_ref(BASE))
    decision = imagechange.decide(config, {}, {BASE_KEY: PINNED_A}, now=NOW)
    assert decision.request is not None
    assert decision.fired == (0,)
    assert decision.request.from_image is not None
    assert decision.request.from_image.kind is ReferenceKind.DOCKER_IMAGE
    assert decision.request.from_image.name == PINNED_A
    (cause,) = decision.request.triggered_by
    assert cause["message"] == "Image change"
    assert cause["imageChangeBuild"] == {
        "imageID": PINNED_A,
        "fromRef": {"kind": "DockerImage", "name": BASE},
    }
    assert decision.states == (
        TriggerState(index=0, last_triggered_image_id=PINNED_A, last_trigger_time=NOW),
    )


def test_initial_build_can_be_turned_off() -> None:
    config = image_config(base=docker_ref(BASE))
    decision = imagechange.decide(config, {}, {BASE_KEY: PINNED_A}, now=NOW, initial_build=False)
    assert decision.request is None
    assert decision.states == (TriggerState(index=0, last_triggered_image_id=PINNED_A),)
    # ...and the next digest builds.
    states = {0: decision.states[0]}
    later = imagechange.decide(config, states, {BASE_KEY: PINNED_B}, now=NOW, initial_build=False)
    assert later.request is not None


def test_the_same_digest_never_starts_a_second_build() -> None:
    config = image_config(base=docker_ref(BASE))
    states = {0: TriggerState(index=0, last_triggered_image_id=PINNED_A)}
    decision = imagechange.decide(config, states, {BASE_KEY: PINNED_A}, now=NOW)
    assert decision.request is None
    assert decision.states == ()


def test_several_triggers_firing_together_make_one_build_with_several_causes() -> None:
    other = "127.0.0.1:5000/team/tools:v1"
    config = image_config(
        base=docker_ref(BASE),
        triggers=[
            {"type": "ImageChange", "imageChange": {}},
            {"type": "ImageChange", "imageChange": {"from": docker_ref(other)}},
        ],
    )
    tools = f"127.0.0.1:5000/team/tools@{DIGEST_B}"
    decision = imagechange.decide(
        config, {}, {BASE_KEY: PINNED_A, "127.0.0.1:5000/team/tools:v1": tools}, now=NOW
    )
    assert decision.request is not None
    assert decision.fired == (0, 1)
    assert [c["imageChangeBuild"]["imageID"] for c in decision.request.triggered_by] == [
        PINNED_A,
        tools,
    ]
    # Only the strategy's own from is pinned.
    assert decision.request.from_image is not None
    assert decision.request.from_image.name == PINNED_A


def test_a_trigger_on_another_image_does_not_pin_the_from() -> None:
    other = "127.0.0.1:5000/team/tools:v1"
    config = image_config(
        base=docker_ref(BASE),
        triggers=[{"type": "ImageChange", "imageChange": {"from": docker_ref(other)}}],
    )
    decision = imagechange.decide(
        config,
        {},
        {"127.0.0.1:5000/team/tools:v1": f"127.0.0.1:5000/team/tools@{DIGEST_B}"},
        now=NOW,
    )
    assert decision.request is not None
    assert decision.request.from_image is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"annotations": {buildconfigs.PAUSED_ANNOTATION: "true"}},
        {"triggers": [{"type": "ImageChange", "imageChange": {"paused": True}}]},
    ],
)
def test_paused_configs_and_triggers_start_nothing(kwargs: dict[str, object]) -> None:
    config = image_config(base=docker_ref(BASE), **kwargs)  # type: ignore[arg-type]
    decision = imagechange.decide(config, {}, {BASE_KEY: PINNED_A}, now=NOW)
    assert decision.request is None
    assert decision.states == ()


def test_image_stream_tag_triggers_use_the_stream_key_and_namespace() -> None:
    config = image_config(base=istag("base:latest"))
    (watched,) = imagechange.watched_images(config)
    assert watched.key == "istag:default/base:latest"
    image = f"127.0.0.1:5000/default/base@{DIGEST_A}"
    decision = imagechange.decide(config, {}, {watched.key: image}, now=NOW)
    assert decision.request is not None
    assert decision.request.triggered_by[0]["imageChangeBuild"]["fromRef"] == {
        "kind": "ImageStreamTag",
        "name": "base:latest",
        "namespace": "default",
    }
    assert decision.request.from_image is not None
    assert decision.request.from_image.name == image


def test_exported_states_seed_dedup() -> None:
    config = image_config(
        base=docker_ref(BASE),
        triggers=[{"type": "ImageChange", "imageChange": {"lastTriggeredImageID": PINNED_A}}],
    )
    states = imagechange.read_states(config)
    assert states[0].last_triggered_image_id == PINNED_A
    status_config = image_config(
        base=istag("base:latest"),
        status={
            "lastVersion": 3,
            "imageChangeTriggers": [
                {
                    "from": {"name": "base:latest", "namespace": "default"},
                    "lastTriggeredImageID": PINNED_B,
                    "lastTriggerTime": "2026-01-01T00:00:00Z",
                }
            ],
        },
    )
    seeded = imagechange.read_states(status_config)
    assert seeded[0].last_triggered_image_id == PINNED_B
    assert seeded[0].last_trigger_time == datetime(2026, 1, 1, tzinfo=UTC)


def test_status_entries_have_openshift_shape() -> None:
    config = image_config(base=istag("base:latest"))
    entries = imagechange.status_entries(
        config,
        {
            0: TriggerState(
                index=0, last_triggered_image_id=PINNED_A, last_trigger_time=NOW, message=""
            )
        },
    )
    assert entries == [
        {
            "from": {"name": "base:latest", "namespace": "default"},
            "lastTriggeredImageID": PINNED_A,
            "lastTriggerTime": "2026-01-02T03:04:05Z",
        }
    ]


def test_check_triggers_names_the_field() -> None:
    config = image_config(base=None)
    errors = imagechange.check_triggers(config)
    assert [e.path for e in errors] == ["spec.triggers[0].imageChange.from"]
    pinned = image_config(
        triggers=[{"type": "ImageChange", "imageChange": {"from": docker_ref(PINNED_A)}}]
    )
    assert [e.path for e in imagechange.check_triggers(pinned)] == [
        "spec.triggers[0].imageChange.from.name"
    ]


def test_bad_poll_interval_is_reported() -> None:
    config = image_config(
        base=docker_ref(BASE),
        triggers=[{"type": "ImageChange", "imageChange": {"pollInterval": "soon"}}],
    )
    assert [e.path for e in imagechange.check_triggers(config)] == [
        "spec.triggers[0].imageChange.pollInterval"
    ]


def test_image_stream_image_kind_is_refused_with_a_path() -> None:
    with pytest.raises(Invalid) as info:
        image_config(base={"kind": "ImageStreamImage", "name": "base@sha256:" + "a" * 64})
    assert info.value.causes[0].path == "spec.strategy.dockerStrategy.from.kind"


def test_image_stream_tag_name_needs_a_tag() -> None:
    with pytest.raises(Invalid) as info:
        image_config(base=istag("base"))
    assert info.value.causes[0].path == "spec.strategy.dockerStrategy.from.name"


def test_build_chains_are_allowed_but_cycles_refused() -> None:
    base = image_config("base", base=docker_ref("busybox"), output=istag("base:latest"))
    app = image_config("app", base=istag("base:latest"), output=istag("app:latest"))
    assert imagechange.find_cycle([base], app) is None
    # base now builds FROM app's output: base → app → base.
    looping = image_config("base", base=istag("app:latest"), output=istag("base:latest"))
    cycle = imagechange.find_cycle([base, app], looping)
    assert cycle == ["default/base", "default/app", "default/base"]


def test_a_config_building_from_its_own_output_is_a_cycle() -> None:
    selfish = image_config("self", base=istag("self:latest"), output=istag("self:latest"))
    assert imagechange.find_cycle([], selfish) == ["default/self", "default/self"]


def test_paused_triggers_do_not_make_cycles() -> None:
    app = image_config("app", base=istag("base:latest"), output=istag("app:latest"))
    base = image_config(
        "base",
        base=istag("app:latest"),
        output=istag("base:latest"),
        triggers=[{"type": "ImageChange", "imageChange": {"paused": True}}],
    )
    assert imagechange.find_cycle([app], base) is None


def test_only_configs_with_an_edge_in_and_out_can_close_a_cycle() -> None:
    chained = image_config("app", base=istag("base:latest"), output=istag("app:latest"))
    assert imagechange.could_close_cycle(chained)
    # No ImageChange trigger: nothing ever starts it from an image, so no cycle through it.
    webhook_only = image_config(
        "hooked",
        base=istag("app:latest"),
        output=istag("hooked:latest"),
        triggers=[{"type": "Generic", "generic": {"secret": "s"}}],
    )
    assert not imagechange.could_close_cycle(webhook_only)
    paused = image_config(
        "paused",
        base=istag("app:latest"),
        output=istag("paused:latest"),
        triggers=[{"type": "ImageChange", "imageChange": {"paused": True}}],
    )
    assert not imagechange.could_close_cycle(paused)
    # Even a config whose trigger watches its own output is found without other configs.
    selfish = image_config("self", base=istag("self:latest"), output=istag("self:latest"))
    assert imagechange.could_close_cycle(selfish)
