"""The plan data model: typed arguments, captured outputs, JSON form (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from triggerd.model.builds import Reason, StageName
from triggerd.model.specs import SourceControlUser, SourceRevision
from triggerd.planning import plan
from triggerd.planning.plan import Captured, InWorkspace, OutputName

SHA = "89abcdef0123456789abcdef0123456789abcdef"


def test_parse_revision_capture() -> None:
    stdout = f"{SHA}\0Ada\0ada@example.com\0Bob\0bob@example.com\0Thu Jan 1\0Fix: a; b\n"
    outputs = plan.parse_captured(plan.Capture.REVISION, stdout)
    assert outputs[OutputName.AUTHOR] == "Ada <ada@example.com>"
    assert outputs[OutputName.MESSAGE] == "Fix: a; b"
    assert plan.revision_from_outputs(outputs) == SourceRevision(
        commit=SHA,
        author=SourceControlUser(name="Ada", email="ada@example.com"),
        committer=SourceControlUser(name="Bob", email="bob@example.com"),
        message="Fix: a; b",
    )
    assert plan.revision_from_outputs({}) is None


@pytest.mark.parametrize("stdout", ["", "not a sha\0a\0b\0c\0d\0e\0f", f"{SHA}\0too few"])
def test_malformed_revision_capture(stdout: str) -> None:
    with pytest.raises(ValueError):
        plan.parse_captured(plan.Capture.REVISION, stdout)


def test_resolve_and_show() -> None:
    outputs = {OutputName.COMMIT: SHA}
    assert plan.resolve("x", "/ws", outputs) == "x"
    assert plan.resolve(InWorkspace(path="a/b", prefix="--f="), "/ws", outputs) == "--f=/ws/a/b"
    assert plan.resolve(Captured(output=OutputName.COMMIT, prefix="id="), "/ws", outputs) == (
        f"id={SHA}"
    )
    with pytest.raises(plan.MissingOutput):
        plan.resolve(Captured(output=OutputName.DIGEST), "/ws", outputs)
    assert plan.show(InWorkspace(path="a/b"), outputs) == "a/b"
    assert plan.show(Captured(output=OutputName.DIGEST), outputs) == "${image.digest}"
    assert plan.show("https://u:p@h/x", outputs) == "https://***@h/x"
    assert (
        plan.strip_credentials("https://u:p@h/x and ssh://git@h/y") == "https://h/x and ssh://h/y"
    )


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd"])
def test_plan_paths_cannot_leave_the_workspace(path: str) -> None:
    with pytest.raises(ValueError):
        plan.workspace_path("/ws", path)


def test_json_round_trip_of_every_action() -> None:
    original = plan.Plan(
        steps=(
            plan.Step(
                stage=StageName.FETCH_INPUTS,
                reason=Reason.FETCH_SOURCE_FAILED,
                action=plan.Command(
                    argv=("git", InWorkspace(path="source"), Captured(output=OutputName.COMMIT)),
                    env={"A": "1", "B": InWorkspace(path="tmp")},
                    capture=plan.Capture.REVISION,
                ),
            ),
            plan.Step(
                stage=StageName.BUILD,
                reason=Reason.DOCKER_BUILD_FAILED,
                action=plan.EditDockerfile(
                    path="source/Dockerfile",
                    output="Dockerfile",
                    from_image="x:1",
                    env=(("E", "1"),),
                    labels=(("l", Captured(output=OutputName.COMMIT, prefix="")),),
                ),
            ),
            plan.Step(
                stage=StageName.BUILD,
                reason=Reason.DOCKER_BUILD_FAILED,
                action=plan.CheckInside(root="source", paths=("source/a",)),
            ),
            plan.Step(
                stage=StageName.BUILD,
                reason=Reason.GENERIC_BUILD_FAILED,
                action=plan.WriteFile(path="f", content="c", mode=0o600),
            ),
            plan.Step(
                stage=StageName.BUILD,
                reason=Reason.GENERIC_BUILD_FAILED,
                action=plan.MakeDirectory(path="d"),
            ),
            plan.Step(
                stage=StageName.PUSH_IMAGE,
                reason=Reason.PUSH_IMAGE_TO_REGISTRY_FAILED,
                action=plan.ReadOutput(path="outputs/digest", output=OutputName.DIGEST),
            ),
        ),
        image="r/x:1",
        deadline_seconds=5,
    )
    assert plan.Plan.from_dict(original.to_dict()) == original


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"version": 99, "steps": []},
        {"version": 1},
        {"version": 1, "steps": [{"stage": "Nope", "reason": "x", "action": {}}]},
        {"version": 1, "steps": [{"stage": "Build", "reason": "DockerBuildFailed",
                                  "action": {"kind": "shell", "script": "rm -rf /"}}]},
    ],
)  # fmt: skip
def test_malformed_plans_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(plan.PlanFormatError):
        plan.Plan.from_dict(doc)
