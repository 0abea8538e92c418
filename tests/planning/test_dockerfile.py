"""Dockerfile edits: last FROM replacement, ENV after FROM, appended LABEL (pure)."""

from __future__ import annotations

import pytest

from triggerd.planning import dockerfile

MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG GO=1.22
FROM --platform=$BUILDPLATFORM golang:${GO} AS build
RUN go build -o /app .

# the runtime stage
FROM \\
    # a comment inside the continuation is dropped by the parser
    alpine:3.19 \\
    AS runtime
COPY --from=build /app /app
CMD ["/app"]
"""


def test_parse_joins_continuations_and_skips_comments() -> None:
    parsed = dockerfile.parse(MULTI_STAGE)
    keywords = [i.keyword for i in parsed.instructions]
    assert keywords == ["ARG", "FROM", "RUN", "FROM", "COPY", "CMD"]
    last_from = parsed.instructions[3]
    assert last_from.arguments.split() == ["alpine:3.19", "AS", "runtime"]
    assert (last_from.start, last_from.end) == (6, 10)


def test_froms_parse_flags_and_aliases() -> None:
    froms = dockerfile.froms(MULTI_STAGE)
    assert froms == [
        dockerfile.From(flags=("--platform=$BUILDPLATFORM",), image="golang:${GO}", alias="build"),
        dockerfile.From(flags=(), image="alpine:3.19", alias="runtime"),
    ]


def test_replace_last_from_keeps_alias_and_everything_else() -> None:
    out = dockerfile.replace_last_from(MULTI_STAGE, "registry.example/base:1")
    assert out == (
        "# syntax=docker/dockerfile:1\n"
        "ARG GO=1.22\n"
        "FROM --platform=$BUILDPLATFORM golang:${GO} AS build\n"
        "RUN go build -o /app .\n"
        "\n"
        "# the runtime stage\n"
        "FROM registry.example/base:1 AS runtime\n"
        "COPY --from=build /app /app\n"
        'CMD ["/app"]\n'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM a\n", "FROM new\n"),
        ("from a as x\nRUN true\n", "FROM new AS x\nRUN true\n"),
        ("FROM --platform=linux/amd64 a AS x\r\nRUN 1\r\n",
         "FROM --platform=linux/amd64 new AS x\r\nRUN 1\r\n"),
        ("FROM a", "FROM new"),
        ("FROM a\nFROM b\nFROM c\n", "FROM a\nFROM b\nFROM new\n"),
    ],
)  # fmt: skip
def test_replace_last_from_variants(text: str, expected: str) -> None:
    assert dockerfile.replace_last_from(text, "new") == expected


def test_escape_directive_changes_the_continuation_character() -> None:
    text = "# escape=`\nFROM a\nRUN echo \\\nFROM b\n"
    # With ` as the escape, the backslash ends no line: there are two FROMs.
    assert [f.image for f in dockerfile.froms(text)] == ["a", "b"]
    assert dockerfile.replace_last_from(text, "z").endswith("RUN echo \\\nFROM z\n")
    text = "# escape=`\nFROM a\nRUN echo `\n  hi\nFROM b AS c\n"
    assert dockerfile.last_from(text) == dockerfile.From(flags=(), image="b", alias="c")


def test_heredoc_bodies_are_not_instructions() -> None:
    text = "FROM a\nRUN <<EOF\nFROM not-an-instruction\nEOF\nRUN <<-END cat\n\tFROM no\n\tEND\n"
    assert [f.image for f in dockerfile.froms(text)] == ["a"]
    assert dockerfile.replace_last_from(text, "b").startswith("FROM b\nRUN <<EOF\nFROM not-an")


def test_env_is_inserted_after_every_from_and_taken_literally() -> None:
    text = "FROM a AS one\nRUN x\nFROM b\nRUN y\n"
    out = dockerfile.insert_env_after_from(text, [("A", 'say "$HOME" \\ now'), ("B", "")])
    line = 'ENV A="say \\"\\$HOME\\" \\\\ now" B=""'
    assert out == f"FROM a AS one\n{line}\nRUN x\nFROM b\n{line}\nRUN y\n"


def test_env_quoting_follows_the_escape_directive() -> None:
    out = dockerfile.insert_env_after_from("# escape=`\nFROM a", [("P", "C:\\x $y")])
    assert out == '# escape=`\nFROM a\nENV P="C:\\x `$y"\n'


def test_labels_are_one_instruction_at_the_end() -> None:
    out = dockerfile.append_labels("FROM a\nRUN x", [("io.x/name", "v 1"), ("b", '"q"')])
    assert out == 'FROM a\nRUN x\nLABEL "io.x/name"="v 1" "b"="\\"q\\""\n'


def test_all_edits_together() -> None:
    out = dockerfile.edit(
        "FROM a AS b\nFROM b\nRUN x\n",
        from_image="c",
        env=[("E", "1")],
        labels=[("l", "2")],
    )
    assert out == 'FROM a AS b\nENV E="1"\nFROM c\nENV E="1"\nRUN x\nLABEL "l"="2"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN true\n", "no FROM"),
        ("", "no FROM"),
        ("# only a comment\n", "no FROM"),
        ("FROM\n", "malformed FROM"),
        ("FROM a AS\n", "malformed FROM"),
        ("FROM a b c d\n", "malformed FROM"),
    ],
)
def test_unusable_dockerfiles_are_reported(text: str, message: str) -> None:
    with pytest.raises(dockerfile.DockerfileError, match=message):
        dockerfile.replace_last_from(text, "x")


@pytest.mark.parametrize(
    ("name", "value"), [("A B", "v"), ("A=B", "v"), ("", "v"), ("A", "two\nlines")]
)
def test_env_that_cannot_be_written_is_refused(name: str, value: str) -> None:
    with pytest.raises(dockerfile.DockerfileError):
        dockerfile.insert_env_after_from("FROM a\n", [(name, value)])


def test_labels_with_newlines_are_refused() -> None:
    with pytest.raises(dockerfile.DockerfileError):
        dockerfile.append_labels("FROM a\n", [("l", "a\nb")])
