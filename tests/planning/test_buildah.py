"""render(): the exact git and buildah argv (and builtin steps) for each kind of build."""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
from typing import Any

import pytest

from triggerd.model import builds
from triggerd.model.builds import Build, Reason, StageName
from triggerd.planning import buildah
from triggerd.planning.plan import (
    REVISION_FORMAT,
    Captured,
    Command,
    EditDockerfile,
    OutputName,
    Plan,
    WriteFile,
    resolve,
)

WS = "/ws"
SHA = "0123456789abcdef0123456789abcdef01234567"
OUTPUTS = {
    OutputName.COMMIT: SHA,
    OutputName.AUTHOR: "Dev <dev@example.com>",
    OutputName.DATE: "Thu Jan 1 00:01:00 2026 +0000",
    OutputName.MESSAGE: "Fix things",
}
CTX = buildah.PlanContext(root="/var/lib/triggerd/storage", runroot="/run/triggerd")
GLOBALS = "buildah --storage-driver vfs --root /var/lib/triggerd/storage --runroot /run/triggerd"
URI = "https://git.example.com/team/app.git"
IMAGE = "registry.example.com/team/app:latest"

SETUP = [
    "FetchInputs/GenericBuildFailed: create directory tmp",
    "FetchInputs/GenericBuildFailed: create directory outputs",
    "FetchInputs/GenericBuildFailed: write registries.conf",
]


def git_steps(target: str, uri: str = URI) -> list[str]:
    fetch = "FetchInputs/FetchSourceFailed: "
    return [
        fetch + "git -c init.defaultBranch=main init --quiet -- /ws/source",
        fetch + f"git -C /ws/source fetch --depth=1 --no-tags -- {uri} {target}",
        fetch + "git -C /ws/source -c advice.detachedHead=false checkout --quiet --detach "
        "FETCH_HEAD",
        fetch + f"git -C /ws/source log -1 {shlex.quote('--format=' + REVISION_FORMAT)} HEAD",
    ]  # fmt: skip


def check(context: str = "source", dockerfile: str = "source/Dockerfile") -> str:
    return f"Build/DockerBuildFailed: check that {context}, {dockerfile} stay inside source"


def edit(dockerfile: str = "source/Dockerfile", what: str = "add 10 labels") -> str:
    return f"Build/DockerBuildFailed: {dockerfile} -> Dockerfile: {what}"


#: OpenShift's build metadata, set in the image config (buildah --env) of every Docker build.
GIT_ENV = (
    " --env OPENSHIFT_BUILD_NAME=app-7 --env OPENSHIFT_BUILD_NAMESPACE=team"
    f" --env OPENSHIFT_BUILD_SOURCE={URI} --env OPENSHIFT_BUILD_REFERENCE=main"
    f" --env OPENSHIFT_BUILD_COMMIT={SHA}"
)


def build_cmd(
    flags: str = "",
    *,
    pull: str = "missing",
    cache: str = "--layers",
    build_args: str = "",
    tag: str = IMAGE,
    context: str = "/ws/source",
    image_env: str = GIT_ENV,
) -> list[str]:
    tag_flag = f" --tag {tag}" if tag else ""
    return [
        f"Build/DockerBuildFailed: {GLOBALS} build --isolation chroot --format docker "
        f"{cache} --force-rm --pull={pull}{flags} --file /ws/Dockerfile "
        f"--iidfile /ws/outputs/image-id{image_env}{build_args}{tag_flag} {context}",
        "Build/DockerBuildFailed: read image.id from outputs/image-id",
    ]


def push_steps(flags: str = "", image: str = IMAGE) -> list[str]:
    push = "PushImage/PushImageToRegistryFailed: "
    return [
        push + f"{GLOBALS} push --retry 3 --digestfile /ws/outputs/digest{flags} "
        f"{image} docker://{image}",
        push + "read image.digest from outputs/digest",
    ]


def spec(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "source": {"type": "Git", "git": {"uri": URI, "ref": "main"}},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
        "output": {"to": {"kind": "DockerImage", "name": IMAGE}},
    }
    for path, value in overrides.items():
        target = doc
        keys = path.split(".")
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    return doc


def make_build(spec_doc: dict[str, Any], name: str = "app-7", namespace: str = "team") -> Build:
    return builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": name, "namespace": namespace},
            "spec": copy.deepcopy(spec_doc),
        }
    )


def script(plan: Plan) -> list[str]:
    """Each step as ``Stage/Reason: argv`` (resolved in /ws) or the builtin's description."""
    lines = []
    for step in plan.steps:
        action = step.action
        if isinstance(action, Command):
            text = shlex.join(resolve(a, WS, OUTPUTS) for a in action.argv)
        else:
            text = action.describe(OUTPUTS)
        lines.append(f"{step.stage.value}/{step.reason.value}: {text}")
    return lines


CASES: list[tuple[str, dict[str, Any], buildah.PlanContext, list[str]]] = [
    (
        "plain git build",
        spec(),
        CTX,
        [*SETUP, *git_steps("main"), check(), edit(), *build_cmd(), *push_steps()],
    ),
    (
        "contextDir and dockerfilePath",
        spec(**{
            "source.contextDir": "services/api",
            "strategy.dockerStrategy.dockerfilePath": "build/Containerfile",
        }),
        CTX,
        [
            *SETUP,
            *git_steps("main"),
            check("source/services/api", "source/services/api/build/Containerfile"),
            edit("source/services/api/build/Containerfile", "add 11 labels"),
            *build_cmd(context="/ws/source/services/api"),
            *push_steps(),
        ],
    ),
    (
        "revision commit wins over the ref",
        spec(revision={"type": "Git", "git": {"commit": SHA}}),
        CTX,
        [*SETUP, *git_steps(SHA), check(), edit(), *build_cmd(), *push_steps()],
    ),
    (
        "no ref builds the remote HEAD",
        spec(**{"source.git.ref": None}),
        CTX,
        [*SETUP, *git_steps("HEAD"), check(), edit(what="add 9 labels"),
         *build_cmd(image_env=GIT_ENV.replace(" --env OPENSHIFT_BUILD_REFERENCE=main", "")),
         *push_steps()],
    ),
    (
        "inline Dockerfile without git",
        spec(source={"type": "Dockerfile", "dockerfile": "FROM busybox\nRUN true\n"}),
        CTX,
        [
            *SETUP,
            "FetchInputs/FetchSourceFailed: create directory source",
            "FetchInputs/FetchSourceFailed: write source/Dockerfile",
            check(),
            edit(what="add 2 labels"),
            *build_cmd(
                image_env=" --env OPENSHIFT_BUILD_NAME=app-7 --env OPENSHIFT_BUILD_NAMESPACE=team"
            ),
            *push_steps(),
        ],
    ),
    (
        "inline Dockerfile over the repository's",
        spec(**{"source.dockerfile": "FROM busybox\n"}),
        CTX,
        [*SETUP, *git_steps("main"),
         "FetchInputs/FetchSourceFailed: write source/Dockerfile",
         check(), edit(), *build_cmd(), *push_steps()],
    ),
    (
        "from replaces the last FROM, forcePull pulls always",
        spec(**{"strategy.dockerStrategy": {
            "from": {"kind": "DockerImage", "name": "busybox:1.36"}, "forcePull": True,
        }}),
        CTX,
        [
            *SETUP,
            *git_steps("main"),
            f"PullImages/PullBuilderImageFailed: {GLOBALS} pull --policy always "
            "docker.io/library/busybox:1.36",
            check(),
            edit(what="replace the last FROM with docker.io/library/busybox:1.36; add 10 labels"),
            *build_cmd(pull="always"),
            *push_steps(),
        ],
    ),
    (
        "from pinned by digest",
        spec(**{"strategy.dockerStrategy.from": {
            "kind": "DockerImage", "name": "registry.example.com/base@sha256:" + "a" * 64,
        }}),
        CTX,
        [
            *SETUP,
            *git_steps("main"),
            f"PullImages/PullBuilderImageFailed: {GLOBALS} pull --policy missing "
            "registry.example.com/base@sha256:" + "a" * 64,
            check(),
            edit(what="replace the last FROM with registry.example.com/base@sha256:"
                 + "a" * 64 + "; add 10 labels"),
            *build_cmd(),
            *push_steps(),
        ],
    ),
    (
        "buildArgs and env",
        spec(**{"strategy.dockerStrategy": {
            "buildArgs": [{"name": "A", "value": "1"}, {"name": "B", "value": "two words"}],
            "env": [{"name": "E", "value": "x"}],
        }}),
        CTX,
        [
            *SETUP, *git_steps("main"), check(),
            edit(what="add ENV E after FROM; add 10 labels"),
            *build_cmd(build_args=" --build-arg A=1 --build-arg 'B=two words'"),
            *push_steps(),
        ],
    ),
    (
        "noCache",
        spec(**{"strategy.dockerStrategy.noCache": True}),
        CTX,
        [*SETUP, *git_steps("main"), check(), edit(), *build_cmd(cache="--no-cache"),
         *push_steps()],
    ),
    (
        "insecure registries for pull and push",
        spec(
            **{
                "output.to.name": "127.0.0.1:5000/team/app:v1",
                "strategy.dockerStrategy.from": {
                    "kind": "DockerImage", "name": "127.0.0.1:5000/base/busybox",
                },
            }
        ),
        buildah.PlanContext(
            root="/var/lib/triggerd/storage",
            runroot="/run/triggerd",
            insecure_registries=frozenset({"127.0.0.1:5000"}),
        ),
        [
            *SETUP,
            *git_steps("main"),
            f"PullImages/PullBuilderImageFailed: {GLOBALS} pull --policy missing "
            "--tls-verify=false 127.0.0.1:5000/base/busybox:latest",
            check(),
            edit(what="replace the last FROM with 127.0.0.1:5000/base/busybox:latest; "
                 "add 10 labels"),
            *build_cmd(tag="127.0.0.1:5000/team/app:v1"),
            *push_steps(" --tls-verify=false", image="127.0.0.1:5000/team/app:v1"),
        ],
    ),
    (
        "auth files for push (absolute) and pulls (in the workspace)",
        spec(**{"strategy.dockerStrategy.from": {"kind": "DockerImage", "name": "quay.io/b/c"}}),
        buildah.PlanContext(
            root="/var/lib/triggerd/storage",
            runroot="/run/triggerd",
            push_auth_file="/etc/triggerd/push.json",
            pull_auth_file="secrets/pull-auth.json",
        ),
        [
            *SETUP,
            *git_steps("main"),
            f"PullImages/PullBuilderImageFailed: {GLOBALS} pull --policy missing "
            "--authfile /ws/secrets/pull-auth.json quay.io/b/c:latest",
            check(),
            edit(what="replace the last FROM with quay.io/b/c:latest; add 10 labels"),
            *build_cmd(" --authfile /ws/secrets/pull-auth.json"),
            *push_steps(" --authfile /etc/triggerd/push.json"),
        ],
    ),
    (
        "no output: no push stage and no tag",
        spec(output=None),
        CTX,
        [*SETUP, *git_steps("main"), check(), edit(), *build_cmd(tag="")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec_doc", "ctx", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_render(spec_doc: dict[str, Any], ctx: buildah.PlanContext, expected: list[str]) -> None:
    plan = buildah.render(make_build(spec_doc), ctx)
    assert script(plan) == expected
    # The same plan comes back from its JSON form (the Kubernetes Job path).
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_commands_run_with_their_environment() -> None:
    plan = buildah.render(make_build(spec()), CTX)
    git_env = plan.commands()[0].env
    # No prompts, and no `git maintenance` after the fetch of a checkout used once.
    assert git_env == {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "maintenance.auto",
        "GIT_CONFIG_VALUE_0": "false",
        "GIT_CONFIG_KEY_1": "gc.auto",
        "GIT_CONFIG_VALUE_1": "0",
    }
    buildah_cmd = plan.commands()[-1]
    assert {k: resolve(v, WS, {}) for k, v in buildah_cmd.env.items()} == {
        "CONTAINERS_REGISTRIES_CONF": "/ws/registries.conf",
        "TMPDIR": "/ws/tmp",
    }


def test_labels_openshift_then_image_labels() -> None:
    plan = buildah.render(
        make_build(
            spec(**{
                "source.contextDir": "api",
                "source.git.uri": "https://bot:s3cret@git.example.com/team/app.git",
                "output.imageLabels": [
                    {"name": "team", "value": "payments"},
                    {"name": "io.openshift.build.commit.ref", "value": "overridden"},
                ],
            })
        ),
        buildah.PlanContext(labels={"site": "lab", "team": "server-default"}),
    )  # fmt: skip
    edit_action = next(s.action for s in plan.steps if isinstance(s.action, EditDockerfile))
    labels = {k: resolve(v, WS, OUTPUTS) for k, v in edit_action.labels}
    assert labels == {
        "site": "lab",
        "team": "payments",
        "io.openshift.build.name": "app-7",
        "io.openshift.build.namespace": "team",
        "io.openshift.build.commit.author": "Dev <dev@example.com>",
        "io.openshift.build.commit.date": "Thu Jan 1 00:01:00 2026 +0000",
        "io.openshift.build.commit.id": SHA,
        "io.openshift.build.commit.message": "Fix things",
        "io.openshift.build.commit.ref": "overridden",
        # Credentials in the URL never reach the image.
        "io.openshift.build.source-location": "https://git.example.com/team/app.git",
        "org.opencontainers.image.source": "https://git.example.com/team/app.git",
        "org.opencontainers.image.revision": SHA,
        "io.openshift.build.source-context-dir": "api",
    }
    assert dict(edit_action.labels)["io.openshift.build.commit.id"] == Captured(
        output=OutputName.COMMIT
    )
    # ...and the log shows the URL redacted.
    remote = plan.commands()[1]
    assert remote.argv[3] == "fetch"
    assert "s3cret" not in remote.describe({})
    assert "https://***@git.example.com/team/app.git" in remote.describe({})


def test_inline_dockerfile_content_and_stages() -> None:
    plan = buildah.render(
        make_build(spec(source={"dockerfile": "FROM scratch\n"}, output=None)), CTX
    )
    writes = [s.action for s in plan.steps if isinstance(s.action, WriteFile)]
    assert writes[-1] == WriteFile(path="source/Dockerfile", content="FROM scratch\n")
    assert plan.stages == (StageName.FETCH_INPUTS, StageName.BUILD)
    assert plan.image == ""


def test_stages_and_deadline() -> None:
    plan = buildah.render(
        make_build(
            spec(
                completionDeadlineSeconds=90,
                **{"strategy.dockerStrategy.from": {"kind": "DockerImage", "name": "a/b"}},
            )
        ),
        CTX,
    )
    assert plan.stages == (
        StageName.FETCH_INPUTS,
        StageName.PULL_IMAGES,
        StageName.BUILD,
        StageName.PUSH_IMAGE,
    )
    assert plan.deadline_seconds == 90
    assert plan.image == IMAGE


def test_registries_conf() -> None:
    ctx = buildah.PlanContext(insecure_registries=frozenset({"127.0.0.1:5000", "reg.lan"}))
    assert buildah.registries_conf(ctx) == (
        "# Written by triggerd for one build.\n"
        'unqualified-search-registries = ["docker.io"]\n'
        "\n[[registry]]\n"
        'location = "127.0.0.1:5000"\n'
        "insecure = true\n"
        "\n[[registry]]\n"
        'location = "reg.lan"\n'
        "insecure = true\n"
    )
    plan = buildah.render(make_build(spec()), ctx)
    conf = next(s.action for s in plan.steps if isinstance(s.action, WriteFile))
    assert conf == WriteFile(path="registries.conf", content=buildah.registries_conf(ctx))


def test_ssh_key_for_git() -> None:
    ctx = buildah.PlanContext(git_ssh_key_file="/ws dir/secrets/ssh-key")
    plan = buildah.render(make_build(spec(**{"source.git.uri": "git@host:team/app.git"})), ctx)
    fetch = plan.commands()[1]
    assert fetch.argv[3] == "fetch"
    assert fetch.env["GIT_SSH_COMMAND"] == (
        "ssh -i '/ws dir/secrets/ssh-key' -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    )


@pytest.mark.parametrize(
    ("overrides", "reason", "message"),
    [
        (
            {"output.to.name": "registry.example.com/team/app@sha256:" + "b" * 64},
            Reason.INVALID_OUTPUT_REFERENCE,
            "must name a tag",
        ),
        (
            {"strategy.dockerStrategy.env": [{"name": "E", "value": "a\nb"}]},
            Reason.DOCKER_BUILD_FAILED,
            "one line",
        ),
        (
            {"output.imageLabels": [{"name": "l", "value": "a\nb"}]},
            Reason.DOCKER_BUILD_FAILED,
            "one line",
        ),
    ],
)
def test_unplannable_builds(overrides: dict[str, Any], reason: Reason, message: str) -> None:
    with pytest.raises(buildah.Unplannable, match=message) as info:
        buildah.render(make_build(spec(**overrides)), CTX)
    assert info.value.reason is reason


def test_source_images_pull_with_their_own_pull_secret() -> None:
    tools = "registry.example.com/private/tools:1"
    doc = spec()
    doc["source"]["images"] = [
        {
            "from": {"kind": "DockerImage", "name": tools},
            "pullSecret": {"name": "private-pull"},
            "paths": [{"sourcePath": "/bin/tool", "destinationDir": "bin"}],
        },
        {
            "from": {"kind": "DockerImage", "name": "registry.example.com/public/x:1"},
            "paths": [{"sourcePath": "/x", "destinationDir": ""}],
        },
    ]
    ctx = dataclasses.replace(
        CTX,
        pull_auth_file="secrets/pull-auth.json",
        image_pull_auth_files={"private-pull": "secrets/image-pull-auth-0.json"},
    )
    pulls = [c for c in buildah.render(make_build(doc), ctx).commands() if "pull" in c.argv]
    resolved = [" ".join(str(resolve(a, WS, {})) for a in c.argv) for c in pulls]
    # The image's own secret for it; the strategy's pull auth for everything else.
    assert resolved[0].endswith(f"--authfile {WS}/secrets/image-pull-auth-0.json {tools}")
    assert resolved[1].endswith(
        f"--authfile {WS}/secrets/pull-auth.json registry.example.com/public/x:1"
    )
    with pytest.raises(
        buildah.Unplannable, match=r'pull secret "private-pull" of spec\.source\.images'
    ) as info:
        buildah.render(make_build(doc), CTX)
    assert info.value.reason is Reason.PULL_BUILDER_IMAGE_FAILED
